//! `switchboard dev`, the README's first command, run as a user runs it: the
//! banner appears only once the port answers, the quick start's CONFIRM is
//! answered through the simulator, and the simulator posts `sms.sent` and the
//! delivered status back, as JustCall does.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
use crate::process::{free_port_and_next, healthy};

#[tokio::test]
async fn dev_serves_the_quick_start_and_reports_statuses_like_justcall() {
    let _load = crate::harness::heavy().await;
    let data = tempfile::tempdir().unwrap();
    let _stderr = ShowOnPanic(data.path().join("dev.stderr"));
    let port = free_port_and_next();
    let (dev, rx) = spawn_dev(&[], data.path(), port);
    let origin = format!("http://127.0.0.1:{port}");
    line_where(&rx, Duration::from_secs(600), |l| {
        l == format!("Switchboard dev is listening on {origin}")
    });
    // Printed only once the port answers, not while plugins compile.
    assert!(healthy(port), "the banner came before the port answered");

    // A fresh connection per request: the server closes idle keep-alive
    // connections, and a reused one may be closed just as it is reused.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let confirm = json!({"event":"sms.received","timestamp":"2026-03-12T14:30:00Z","data":{"message_id":"msg_1","direction":"inbound",
        "from":"+15125551234","to":"+15125550100","body":"CONFIRM","media_urls":[],"justcall_number":"+15125550100",
        "contact_name":"Sarah Chen","agent_id":null}});
    let resp = client.post(format!("{origin}/webhooks/demo")).json(&confirm).send().await.unwrap();
    assert_eq!(resp.status(), 202);

    // The JavaScript example answers through the simulator.
    let reply = wait("the reply", || async {
        let list = get_json(
            &client,
            &format!("{origin}/justcall/api/v2/texts/list"),
            Some("demo-key:demo-secret"),
        )
        .await?;
        list["data"]
            .as_array()?
            .iter()
            .find(|m| m["direction"] == "outbound" && m["to"] == "+15125551234")
            .cloned()
    })
    .await;
    assert_eq!(reply["body"], "Your appointment is confirmed.", "{reply}");
    let id = reply["id"].as_str().unwrap().to_string();

    // The simulator reports it sent, then delivered, to the tenant's webhook:
    // analytics-pipeline streams both events, about that message, to the warehouse.
    let streamed = wait("sent and delivered in the warehouse", || async {
        let sink = get_json(&client, &format!("{origin}/dev/sink/warehouse"), None).await?;
        let about: Vec<String> = sink["data"]
            .as_array()?
            .iter()
            .filter(|e| e["message_id"] == id.as_str())
            .filter_map(|e| e["kind"].as_str().map(str::to_string))
            .collect();
        (about.len() >= 2).then_some(about)
    })
    .await;
    assert_eq!(streamed, ["sent", "delivered"], "in order, once each");

    assert!(dev.stop(), "dev stopped cleanly on SIGINT");
}

/// The README's "act later" quick start: `dev --time-scale 8640` (a day in
/// ten seconds), a booking sent with `switchboard send`, the pending timers
/// listed by `switchboard admin timers`, then the escalation and exactly one
/// reminder (the reminder's own `sent` status webhook is not a booking).
#[tokio::test]
async fn dev_time_scale_reminds_once_before_a_booking() {
    let _load = crate::harness::heavy().await;
    let data = tempfile::tempdir().unwrap();
    let _stderr = ShowOnPanic(data.path().join("dev.stderr"));
    let port = free_port_and_next();
    let (dev, rx) = spawn_dev(&["--time-scale", "8640"], data.path(), port);
    let origin = format!("http://127.0.0.1:{port}");
    line_where(&rx, Duration::from_secs(600), |l| {
        l == format!("Switchboard dev is listening on {origin}")
    });
    let day = (chrono::Utc::now() + chrono::Duration::days(2)).format("%Y-%m-%d").to_string();
    let booking = format!("Your cleaning is booked for {day} 10:00. Reply CONFIRM to confirm.");
    let (ok, out, err) = crate::harness::switchboard(
        &[
            "send",
            "--url",
            &origin,
            "--tenant",
            "demo",
            "--kind",
            "sent",
            "--to",
            "+15125551234",
            "--body",
            &booking,
        ],
        &[],
        None,
    )
    .await;
    assert!(ok, "{out}{err}");
    let admin = format!("http://127.0.0.1:{}", port + 1);
    let listed = wait_up_to("the reminder to be listed", Duration::from_secs(10), || async {
        let (ok, out, _) = crate::harness::switchboard(&["admin", "--url", &admin, "timers", "--tenant", "demo"], &[], None).await;
        (ok && out.contains("reminder:+15125551234")).then_some(out)
    })
    .await;
    assert!(listed.starts_with("PLUGIN"), "{listed}");
    assert!(
        listed.contains(&format!(
            "{}T10:00:00.000Z",
            (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%d")
        )),
        "{listed}"
    );

    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let reminders = || async {
        let list = get_json(
            &client,
            &format!("{origin}/justcall/api/v2/texts/list"),
            Some("demo-key:demo-secret"),
        )
        .await?;
        let sent: Vec<Value> = list["data"]
            .as_array()?
            .iter()
            .filter(|m| m["to"] == "+15125551234" && m["body"].as_str().is_some_and(|b| b.starts_with("Reminder:")))
            .cloned()
            .collect();
        Some(sent)
    };
    let first = wait_up_to("the reminder", Duration::from_secs(60), || async {
        reminders().await.filter(|r| !r.is_empty())
    })
    .await;
    assert!(first[0]["body"].as_str().unwrap().contains(&format!("{day} 10:00")), "{}", first[0]);
    let team = get_json(&client, &format!("{origin}/dev/sink/team"), None).await.unwrap();
    assert_eq!(team["data"].as_array().map(Vec::len), Some(1), "{team}");
    // A day on the fast clock later, still one reminder.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(reminders().await.map(|r| r.len()), Some(1));
    assert!(dev.stop(), "dev stopped cleanly on SIGINT");
}

/// Polls `check` until it gives a value (two minutes at most).
async fn wait<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_up_to(what, Duration::from_secs(120), check).await
}

/// [`wait`] with its own limit.
async fn wait_up_to<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running `dev`: stopped with SIGINT by [`Dev::stop`], killed if the test
/// fails first, so no server outlives its test.
struct Dev(std::process::Child);

impl Dev {
    /// Stops it as Ctrl-C would; whether it exited cleanly.
    fn stop(mut self) -> bool {
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        self.0.wait().is_ok_and(|s| s.success())
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `switchboard dev` with `args`, and gives its stdout line by line.
fn spawn_dev(args: &[&str], data: &std::path::Path, port: u16) -> (Dev, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(["dev", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(
            std::fs::File::create(data.join("dev.stderr"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Dev(child), rx)
}

/// Reads lines until each of `wanted` has matched one, in any order (within
/// `limit`); returns the matching lines in the order of `wanted`.
fn lines_where(rx: &std::sync::mpsc::Receiver<String>, limit: Duration, wanted: &[&dyn Fn(&str) -> bool]) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut found: Vec<Option<String>> = vec![None; wanted.len()];
    let mut seen = Vec::new();
    while found.iter().any(Option::is_none) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => match wanted.iter().zip(found.iter_mut()).find(|(w, f)| f.is_none() && w(&line)) {
                Some((_, slot)) => *slot = Some(line),
                None => seen.push(line),
            },
            Err(_) => panic!("not every line came within {limit:?}; saw:\n{}", seen.join("\n")),
        }
    }
    found.into_iter().map(Option::unwrap).collect()
}

/// Reads lines until one satisfies `wanted` (within `limit`); returns it.
fn line_where(rx: &std::sync::mpsc::Receiver<String>, limit: Duration, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if wanted(&line) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no such line within {limit:?}; saw:\n{}", seen.join("\n")),
        }
    }
}

#[tokio::test]
async fn dev_plugin_builds_watches_and_streams_the_authors_plugins() {
    let _load = crate::harness::heavy().await;
    let work = tempfile::tempdir().unwrap();
    crate::harness::guest("noop"); // the pinned JS and Python tools are installed by the guest build
    for (name, lang) in [("hello-js", "js"), ("hello-py", "python"), ("hello-rs", "rust")] {
        let out = Command::new(BIN)
            .args(["plugin", "new", name, "--lang", lang, "--dir"])
            .arg(work.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // C has no starter: an author starts from the example, renamed.
    let c = work.path().join("hello-c");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/analytics-pipeline");
    std::fs::create_dir(&c).unwrap();
    for file in ["build.sh", "plugin.c", "plugin.toml"] {
        let text = std::fs::read_to_string(example.join(file)).unwrap();
        std::fs::write(c.join(file), text.replace("analytics-pipeline", "hello-c")).unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    let _stderr = ShowOnPanic(data.path().join("dev.stderr"));
    let port = free_port_and_next();
    let (js, py, rs) = (
        work.path().join("hello-js"),
        work.path().join("hello-py"),
        work.path().join("hello-rs"),
    );
    let mut args = vec!["--no-status-webhooks"];
    for dir in [&js, &py, &rs, &c] {
        args.extend(["--plugin", dir.to_str().unwrap()]);
    }
    // Statuses posted back would only add load; the other test covers them.
    let (dev, rx) = spawn_dev(&args, data.path(), port);
    let runs = line_where(&rx, Duration::from_secs(600), |l| l.starts_with("tenant `demo`"));
    for name in ["hello-js", "hello-py", "hello-rs", "hello-c"] {
        assert!(runs.contains(name), "{runs}");
    }
    line_where(&rx, Duration::from_secs(60), |l| l.starts_with("Try it:"));
    assert!(healthy(port));

    let origin = format!("http://127.0.0.1:{port}");
    // A fresh connection per request: the server closes idle keep-alive
    // connections, and a reused one may be closed just as it is reused.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let post = |body: &str, id: &str| {
        let event = json!({"event":"sms.received","timestamp":"2026-03-12T14:30:00Z","data":{"message_id":id,"direction":"inbound",
            "from":"+15125559876","to":"+15125550100","body":body,"media_urls":[],"justcall_number":"+15125550100",
            "contact_name":null,"agent_id":null}});
        let (client, url) = (client.clone(), format!("{origin}/webhooks/demo"));
        async move { client.post(url).json(&event).send().await.unwrap().status().as_u16() }
    };
    // One line per invocation with its outcome, for the author's plugins only.
    assert_eq!(post("hello", "m1").await, 202);
    let ok = |name: &'static str| move |l: &str| l.contains(&format!(" {name} ok    event …")) && l.ends_with(" ms");
    lines_where(
        &rx,
        Duration::from_secs(60),
        &[&ok("hello-js"), &ok("hello-py"), &ok("hello-rs"), &ok("hello-c")],
    );

    // Edit every source: the new behaviour is served after the rebuild, with
    // what they print, what fetch()/urllib get from the dev sink (allowed in
    // dev) and from a host that is not allowed (a catchable error), and the
    // message of what they throw.
    let edit = |file: std::path::PathBuf, anchor: &str, insert: &str| {
        let source = std::fs::read_to_string(&file).unwrap();
        assert!(source.contains(anchor), "the starter changed: {}", file.display());
        std::fs::write(&file, source.replace(anchor, &format!("{anchor}{insert}"))).unwrap();
    };
    let edited_at = chrono::Utc::now();
    for (dir, name) in [(&js, "hello-js"), (&py, "hello-py")] {
        let manifest = dir.join("plugin.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(&manifest, format!("{text}\n[dev.config]\nsink = \"{{origin}}/dev/sink/{name}\"\n")).unwrap();
    }
    edit(
        py.join("app.py"),
        "    def handle_event(self, event: types.SmsEvent) -> None:\n",
        "        import urllib.error, urllib.request\n\
         \x20       print(f\"edited python saw {event.body}\")\n\
         \x20       if event.body == \"BOOM\":\n\
         \x20           raise ValueError(\"boom from python\")\n\
         \x20       with urllib.request.urlopen(urllib.request.Request(config.require(\"sink\"), data=b\"hi\", method=\"POST\")) as r:\n\
         \x20           print(f\"sink answered {r.status}\")\n\
         \x20       try:\n\
         \x20           urllib.request.urlopen(\"http://127.0.0.1:9/x\")\n\
         \x20       except urllib.error.URLError as e:\n\
         \x20           print(f\"refused: {e.reason}\")\n",
    );
    edit(
        js.join("plugin.js"),
        "export async function handleEvent(event) {\n",
        "  console.log(`edited js saw ${event.body}`);\n\
         \x20 if (event.body === 'BOOM') {\n    throw new Error('boom from js');\n  }\n\
         \x20 const sink = await fetch(config.require('sink'), { method: 'POST', body: 'hi' });\n\
         \x20 console.log(`sink answered ${sink.status}`);\n\
         \x20 try {\n    await fetch('http://127.0.0.1:9/x');\n  } catch (e) {\n    console.log(`refused: ${e}`);\n  }\n",
    );
    edit(
        rs.join("src/lib.rs"),
        "    fn handle_event(event: SmsEvent) -> Result<(), PluginError> {\n",
        "        println!(\"edited rust saw {}\", event.body);\n\
         \x20       if event.body == \"BOOM\" {\n            return Err(PluginError::new(\"boom from rust\"));\n        }\n",
    );
    edit(
        c.join("plugin.c"),
        "bool exports_plugin_handle_event(plugin_sms_event_t *event, plugin_plugin_error_t *err) {\n",
        "  printf(\"edited c saw %.*s\\n\", (int)event->body.len, (const char *)event->body.ptr);\n\
         \x20 if (event->body.len == 4 && memcmp(event->body.ptr, \"BOOM\", 4) == 0) return fail(err, \"boom from c\");\n",
    );
    let names = ["hello-js", "hello-py", "hello-rs", "hello-c"];
    let rebuilt = |name: &'static str| move |l: &str| l.ends_with(&format!(" {name} rebuilt; reloading"));
    let (r0, r1, r2, r3) = (rebuilt(names[0]), rebuilt(names[1]), rebuilt(names[2]), rebuilt(names[3]));
    lines_where(&rx, Duration::from_secs(600), &[&r0, &r1, &r2, &r3]);
    // Hot reload follows the rebuild once the new component has compiled;
    // then the edits answer.
    let admin = format!("http://127.0.0.1:{}/admin/tenants/demo/plugins", port + 1);
    // Four components compile at once on two cores, beside other tests.
    let reloaded = wait_up_to("every edit to be serving", Duration::from_secs(360), || async {
        let list = get_json(&client, &admin, Some("dev-admin")).await?;
        let fresh = |name: &str| {
            list["plugins"].as_array().into_iter().flatten().any(|p| {
                p["name"] == name
                    && p["rejected"].is_null()
                    && p["loaded_at"]
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .is_some_and(|t| t > edited_at)
            })
        };
        names.iter().all(|n| fresh(n)).then_some(())
    });
    reloaded.await;
    assert_eq!(post("again", "again").await, 202);
    let says = |name: &'static str, what: &'static str| move |l: &str| l.contains(&format!(" {name} info  {what}"));
    lines_where(
        &rx,
        Duration::from_secs(60),
        &[
            &says("hello-js", "edited js saw again"),
            &says("hello-py", "edited python saw again"),
            &says("hello-rs", "edited rust saw again"),
            &says("hello-c", "edited c saw again"),
            &says("hello-js", "sink answered 200"),
            &says("hello-py", "sink answered 200"),
            &says("hello-js", "refused: TypeError: NetworkError when attempting to fetch resource"),
            &says(
                "hello-py",
                "refused: http.send: not-allowed: http://127.0.0.1:9 is not in allowed_hosts",
            ),
        ],
    );
    assert_eq!(post("BOOM", "boom").await, 202);
    // The Python outcome line is one line: the traceback's newlines are
    // escaped (the traceback itself came before, as the plugin's stderr).
    let fail = |name: &'static str| move |l: &str| l.contains(&format!(" {name} FAIL  event …"));
    let lines = lines_where(
        &rx,
        Duration::from_secs(60),
        &[&fail("hello-js"), &fail("hello-py"), &fail("hello-rs"), &fail("hello-c")],
    );
    assert!(lines[0].ends_with("plugin error: boom from js"), "{}", lines[0]);
    assert!(lines[1].contains("trap: "), "{}", lines[1]);
    assert!(lines[1].contains("\\nValueError: boom from python\\n"), "{}", lines[1]);
    assert!(lines[2].ends_with("plugin error: boom from rust"), "{}", lines[2]);
    assert!(lines[3].ends_with("plugin error: boom from c"), "{}", lines[3]);

    assert!(dev.stop(), "dev stopped cleanly on SIGINT");
}

/// Prints the tail of dev's stderr if the test fails, so CI shows why.
struct ShowOnPanic(std::path::PathBuf);

impl Drop for ShowOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            let _ = std::fs::write(std::env::temp_dir().join("switchboard-dev-test.stderr"), &log);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "dev's stderr, last lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// `GET url` (with a bearer token) as JSON; `None` if anything fails, for
/// polling.
async fn get_json(client: &reqwest::Client, url: &str, bearer: Option<&str>) -> Option<Value> {
    let mut req = client.get(url);
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    req.send().await.ok()?.json().await.ok()
}
