//! The web console in a real browser: Debian's chromium, driven through
//! chromedriver (WebDriver), against the real server. Journeys: a wrong token
//! is refused and the right one signs in; a CONFIRM event appears in the
//! deliveries table without a reload; its page shows the plugin's log line
//! and its `sms.send`; Replay makes a new delivery; a paused plugin is
//! resumed from its tenant's page, whose charts draw, and the pages fit a
//! phone's width; a form without its
//! CSRF token is refused. Each step's screenshot is saved under
//! `target/console/`.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::harness::{ADMIN_TOKEN, FakeJustCall, PluginSpec, TenantSpec, TestHost, fixture, paused_flaky, wait_for};

/// A headless chromium behind its own chromedriver; both end on drop.
struct Browser {
    client: Client,
    driver: Child,
    journey: &'static str,
    step: u32,
    _profile: tempfile::TempDir,
}

fn shots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("console")
}

impl Browser {
    async fn open(journey: &'static str) -> Browser {
        let port = crate::process::free_port();
        // Its own process group, so the browser it starts goes with it.
        let driver = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) is installed: .ci/run installs it");
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--window-size=1280,900", format!("--user-data-dir={}", profile.path().display())]
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
                Ok(c) => break c,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot start chromium through chromedriver: {e}"),
            }
        };
        std::fs::create_dir_all(shots_dir()).unwrap();
        Browser {
            client,
            driver,
            journey,
            step: 0,
            _profile: profile,
        }
    }

    /// Saves a screenshot of the page as it is now.
    async fn shot(&mut self, what: &str) {
        self.step += 1;
        let png = self.client.screenshot().await.expect("screenshot");
        let path = shots_dir().join(format!("{}-{:02}-{what}.png", self.journey, self.step));
        std::fs::write(path, png).unwrap();
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The text of the first `css` element, found again if the page
    /// reloaded under it.
    async fn text(&self, css: &str) -> String {
        let started = Instant::now();
        loop {
            match self.find(css).await.text().await {
                Ok(t) => return t,
                Err(e) if started.elapsed() < Duration::from_secs(10) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("text of `{css}`: {e}"),
            }
        }
    }

    /// Waits until the text of `css` contains `what` (the page may reload itself meanwhile).
    async fn until_text(&self, css: &str, what: &str) -> String {
        let started = Instant::now();
        loop {
            let t = self.text(css).await;
            if t.contains(what) {
                return t;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "`{css}` never showed `{what}`: {t}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                let url = self.client.current_url().await.map(|u| u.to_string());
                panic!("no `{css}` on {url:?}: {e}")
            }
        }
    }

    async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        }
    }

    async fn sign_in(&mut self, host: &TestHost, token: &str) {
        self.goto(&format!("{}/console/tenants", host.admin_url)).await;
        self.find("#token").await.send_keys(token).await.unwrap();
        self.find("form.signin button[type=submit]").await.click().await.unwrap();
    }
}

impl Drop for Browser {
    /// Ends chromedriver and the chromium it started (their process group),
    /// even when a journey failed before closing its session.
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

#[tokio::test]
async fn sign_in_watch_a_delivery_arrive_open_it_and_replay_it() {
    // "Within 2 s" is a deadline: not beside the tests that load every core.
    let _load = crate::harness::deadline_bound().await;
    let jc = FakeJustCall::start().await;
    let tenant = TenantSpec::new("acme", &jc.url).plugin(PluginSpec::new("appointment-confirm", "confirmer", "events = [\"received\"]\n"));
    let host = TestHost::start(vec![tenant]).await;
    let mut b = Browser::open("journey").await;

    // Not signed in: the console sends you to sign in; a wrong token is refused.
    b.sign_in(&host, "not-the-admin-token").await;
    assert_eq!(b.path().await, "/console/sign-in");
    let refusal = b.text("p.error").await;
    assert_eq!(refusal, "That is not a valid token.");
    b.shot("wrong-token").await;

    b.sign_in(&host, ADMIN_TOKEN).await;
    b.find("#tenants").await;
    assert_eq!(b.path().await, "/console/tenants");
    let session = b.client.get_named_cookie("sb_console").await.expect("a session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(session.same_site().map(|s| s.to_string()).as_deref(), Some("Strict"));
    assert!(b.text("#tenants tbody").await.contains("acme"));
    b.shot("tenants").await;

    // The deliveries table, live: a CONFIRM webhook's delivery appears
    // within 2 s, on the same page (a marker set before survives).
    b.goto(&format!("{}/console/tenants/acme/deliveries", host.admin_url)).await;
    b.find("#live[data-connected]").await;
    b.client.execute("window.notReloaded = true;", vec![]).await.unwrap();
    let (status, ack) = host.post("acme", fixture("seed-format/sms.received-confirm.json"), &[]).await;
    assert_eq!(status, 202, "{ack}");
    let posted = Instant::now();
    let row = loop {
        let rows = b.client.find_all(Locator::Css("#deliveries tbody tr")).await.unwrap();
        if let Some(r) = rows.first() {
            break r.clone();
        }
        assert!(posted.elapsed() < Duration::from_secs(2), "no row within 2 s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let row_text = row.text().await.unwrap();
    assert!(row_text.contains("confirmer") && row_text.contains("sms.received"), "{row_text}");
    let still = b.client.execute("return window.notReloaded === true;", vec![]).await.unwrap();
    assert_eq!(still, serde_json::json!(true), "the page reloaded");
    b.shot("live-row").await;

    // Its page: the plugin's log line and its sms.send, on the timeline.
    row.find(Locator::Css("a")).await.unwrap().click().await.unwrap();
    let first = b.path().await;
    let timeline = b.until_text("#attempt-1 ol.timeline", "sms.send").await;
    assert!(timeline.contains("confirmed appointment for +1"), "{timeline}");
    assert!(timeline.contains("sms.send") && timeline.contains("→ ok: id"), "{timeline}");
    assert!(b.text("pre.payload").await.contains(&ack["event_id"].as_str().unwrap().to_string()));
    b.shot("delivery").await;

    // Replay: a new delivery of the same event, shown with where it came from.
    b.find("form[action$='/replay'] button").await.click().await.unwrap();
    b.find("p.notice").await;
    let second = b.path().await;
    assert!(second.contains("replayed_from="), "{second}");
    assert_ne!(second.split('?').next(), Some(first.as_str()));
    assert_eq!(b.text("#plugin").await, "confirmer");
    jc.wait_for_sent(2).await;
    // The page follows the new delivery until its attempt has ended.
    b.until_text("#attempt-1", "sms.send").await;
    b.shot("replayed").await;
    b.client.clone().close().await.unwrap();
}

#[tokio::test]
async fn resume_a_paused_plugin_from_its_page_and_see_the_charts() {
    let jc = FakeJustCall::start().await;
    let (host, _) = paused_flaky(&jc.url).await;

    let mut b = Browser::open("resume").await;
    b.sign_in(&host, ADMIN_TOKEN).await;
    b.find("#tenants").await;
    let overview = b.text("#tenants tbody").await;
    assert!(overview.contains("paused flaky"), "{overview}");
    b.goto(&format!("{}/console/tenants/acme", host.admin_url)).await;
    let row = b.text("tr[data-plugin=flaky]").await;
    assert!(row.contains("paused"), "{row}");
    // The charts draw from the server's own data: three, with the failures.
    b.find("#charts[data-drawn]").await;
    let canvases = b.client.find_all(Locator::Css("#charts canvas")).await.unwrap();
    assert_eq!(canvases.len(), 3);
    let legend = b.text("[data-chart=failures]").await;
    assert!(legend.contains("flaky"), "{legend}");
    b.shot("paused").await;

    b.find("tr[data-plugin=flaky] form button").await.click().await.unwrap();
    let notice = b.text("p.notice").await;
    assert!(notice.starts_with("Resumed flaky"), "{notice}");
    let row = b.text("tr[data-plugin=flaky]").await;
    assert!(row.contains("active") && !row.contains("paused"), "{row}");
    let (_, plugins) = host.admin("GET", "/tenants/acme/plugins", Some(ADMIN_TOKEN)).await;
    assert_eq!(plugins["plugins"][0]["status"], "active");
    // The audit log on the same page says who resumed it.
    let audit = b.text("#audit tbody").await;
    assert!(
        audit.contains("operator") && audit.contains("resume") && audit.contains("flaky"),
        "{audit}"
    );
    b.shot("resumed").await;

    // On a phone: the pages fit the screen's width (wide tables scroll
    // inside their box, the filters wrap).
    b.client.set_window_size(390, 844).await.unwrap();
    for page in ["", "/deliveries"] {
        b.goto(&format!("{}/console/tenants/acme{page}", host.admin_url)).await;
        b.find("main h1").await;
        let fits = b
            .client
            .execute("return document.documentElement.scrollWidth <= window.innerWidth;", vec![])
            .await
            .unwrap();
        assert_eq!(fits, serde_json::json!(true), "/console/tenants/acme{page} is wider than a phone");
        b.shot(if page.is_empty() { "phone-tenant" } else { "phone-deliveries" }).await;
    }
    b.client.clone().close().await.unwrap();
}

#[tokio::test]
async fn a_form_without_its_csrf_token_is_refused() {
    let jc = FakeJustCall::start().await;
    let tenant = TenantSpec::new("acme", &jc.url).plugin(PluginSpec::new("appointment-confirm", "confirmer", "events = [\"received\"]\n"));
    let host = TestHost::start(vec![tenant]).await;
    let (_, ack) = host.post("acme", fixture("seed-format/sms.received-confirm.json"), &[]).await;
    let event = ack["event_id"].as_str().unwrap().to_string();
    wait_for("the delivery to finish", Duration::from_secs(10), || {
        host.deliveries(&event).first().is_some_and(|d| d.1 == "done")
    })
    .await;
    let (_, list) = host.admin("GET", "/tenants/acme/deliveries", Some(ADMIN_TOKEN)).await;
    let delivery = list["deliveries"][0]["id"].clone();

    let mut b = Browser::open("csrf").await;
    b.sign_in(&host, ADMIN_TOKEN).await;
    b.find("#tenants").await;
    b.goto(&format!("{}/console/tenants/acme/deliveries/{delivery}", host.admin_url))
        .await;
    // A page that lost its token (as a forged form would lack it).
    let script = "document.querySelectorAll(\"form[action$='/replay'] input[name=csrf]\").forEach(i => i.remove());";
    b.client.execute(script, vec![]).await.unwrap();
    b.find("form[action$='/replay'] button").await.click().await.unwrap();
    let refusal = b.text("p.error").await;
    assert!(refusal.contains("did not come from the console"), "{refusal}");
    assert!(b.text("h1").await.starts_with("403"));
    b.shot("refused").await;
    // Nothing was replayed.
    let (_, after) = host.admin("GET", "/tenants/acme/deliveries", Some(ADMIN_TOKEN)).await;
    assert_eq!(after["deliveries"].as_array().unwrap().len(), 1, "{after}");
    b.client.clone().close().await.unwrap();

    // Without a browser: no session, no page; a sign-in without its form's
    // token is refused before the token is looked at.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client.get(format!("{}/console/tenants", host.admin_url)).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/console/sign-in");
    let resp = client
        .post(format!("{}/console/sign-in", host.admin_url))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(
        resp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
}
