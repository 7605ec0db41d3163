//! redis-server processes for the mirror tests: each on a free loopback
//! port of its own (never the shared server on 6379) with its own temp
//! dir, killed when dropped. Shared by tests/mirror.rs and
//! tests/mirror_cluster.rs; each test crate uses only part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it holds; panics after `limit`.
pub fn wait_for(what: &str, limit: Duration, f: &mut dyn FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what} (after {limit:?})");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// A free loopback port `p` whose cluster bus port `p + 10000` is free too.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = l.local_addr().expect("addr").port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// One redis-server child (a cluster node, a master, a replica or a
/// sentinel) on a loopback port of its own.
pub struct Server {
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// Arguments after the port (and the config file for a sentinel).
    pub args: Vec<String>,
    pub config: Option<String>,
    /// Its `requirepass`, put in `url()`.
    pub password: Option<String>,
    child: Option<Child>,
}

impl Server {
    pub fn new(args: &[&str]) -> Server {
        Server {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            args: args.iter().map(|s| s.to_string()).collect(),
            config: None,
            password: None,
            child: None,
        }
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// Starts (again) on the same port and directory, and waits for PING.
    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let mut cmd = Command::new("redis-server");
        if let Some(conf) = &self.config {
            let path = self.dir.path().join("sentinel.conf");
            std::fs::write(&path, conf).unwrap();
            cmd.arg(&path).arg("--sentinel");
        }
        let child = cmd
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", ""])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self.try_conn()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server with SIGKILL (no shutdown work: an outage or a
    /// crash).
    pub fn kill(&mut self) {
        self.stop("-KILL");
    }

    /// Stops the server with `signal` (`-TERM` lets it shut down cleanly)
    /// and waits for it.
    pub fn stop(&mut self, signal: &str) {
        // No assertion here: this also runs in `Drop`, maybe while a test
        // is already panicking.
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args([signal, &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (`-STOP`, `-CONT`, ...) to the running server.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .expect("kill")
                .success(),
            "kill {signal} {pid}"
        );
    }

    pub fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(1))
    }

    pub fn conn(&self) -> redis::Connection {
        self.try_conn().expect("connect to the test redis")
    }

    pub fn info(&self, section: &str) -> String {
        redis::cmd("INFO")
            .arg(section)
            .query(&mut self.conn())
            .unwrap_or_default()
    }

    /// Calls per command from INFO commandstats.
    pub fn commandstats(&self) -> HashMap<String, u64> {
        self.info("commandstats")
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("cmdstat_")?;
                let (name, stats) = rest.split_once(':')?;
                let calls = stats.split(',').find_map(|f| f.strip_prefix("calls="))?;
                Some((name.to_string(), calls.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
