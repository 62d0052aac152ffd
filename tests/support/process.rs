//! Running the real `switchboard` binary as a child process: one helper
//! shared by the integration tests and the benchmarks.

// Each of the two crates that include this file uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A loopback port free right now whose next port is free too: for `dev`,
/// whose admin API listens on the port after its own.
pub fn free_port_and_next() -> u16 {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// `bin serve --config <config> --listen 127.0.0.1:<port>`, with the admin
/// API on `admin_port` (an ephemeral port if `None`), quiet (errors only,
/// stdout and stderr discarded); adjust before [`Process::spawn`].
pub fn serve_command(bin: &str, config: &Path, port: u16, admin_port: Option<u16>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--config"])
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{}", admin_port.unwrap_or(0))])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// `GET /healthz` on `port` answers 200 (plain std I/O, so usable from any
/// context).
pub fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(600)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: switchboard\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// Blocks until `GET /healthz` on `port` answers 200, or panics after `limit`.
pub fn wait_until_healthy(port: u16, limit: Duration) {
    let started = Instant::now();
    while !healthy(port) {
        assert!(started.elapsed() < limit, "switchboard did not come up within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `switchboard`; killed on drop.
pub struct Process {
    pub child: Child,
    pub port: u16,
}

impl Process {
    /// Starts `cmd`, which serves on `port`.
    pub fn spawn(mut cmd: Command, port: u16) -> Process {
        let child = cmd.spawn().expect("starting switchboard");
        Process { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Blocks until `GET /healthz` answers 200, or panics after `limit` or
    /// if the process exits.
    pub fn wait_healthy(&mut self, limit: Duration) {
        let started = Instant::now();
        while !healthy(self.port) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("switchboard exited before serving: {status}");
            }
            assert!(started.elapsed() < limit, "switchboard did not come up within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM (a graceful stop) and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("running kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        self.child.wait().expect("waiting for switchboard")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
