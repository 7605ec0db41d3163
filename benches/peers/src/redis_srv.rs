//! A private `redis-server` on an ephemeral loopback port, killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    /// Kept so the AOF/RDB directory lives as long as the server.
    _dir: Option<tempfile::TempDir>,
    client: redis::Client,
}

impl RedisServer {
    /// Starts `redis-server` with `extra` arguments (e.g. `--appendonly yes`);
    /// `None` when it is not installed.
    pub fn start(extra: &[&str]) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().to_path_buf();
        Self::start_in(&path, Some(dir), extra)
    }

    /// Starts it with `--dir dir` (to reload an RDB or AOF left there).
    pub fn start_in(
        dir: &std::path::Path,
        owned: Option<tempfile::TempDir>,
        extra: &[&str],
    ) -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
        let srv = RedisServer {
            child,
            port,
            _dir: owned,
            client,
        };
        srv.wait_ready(Duration::from_secs(120));
        Some(srv)
    }

    /// Waits until the server answers PING with PONG (not LOADING).
    pub fn wait_ready(&self, limit: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(mut c) = self.client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("redis-server on port {} did not become ready", self.port);
    }

    pub fn connection(&self) -> redis::Connection {
        self.client
            .get_connection()
            .expect("connect to the bench redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
