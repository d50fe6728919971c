//! A real `redis-server` for tests (the crate's own and the black-box ones in `tests/`): started on a free loopback port with nothing persisted, stopped by PID when
//! dropped. Without `redis-server` on PATH the test fails with the command that installs it, unless
//! `VIDU_GW_SKIP_REDIS_TESTS=1` is set (local runs only; CI installs it and never skips).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

/// Whether the Redis tests are switched off here (and say so).
pub fn skipped() -> bool {
    let skip = std::env::var("VIDU_GW_SKIP_REDIS_TESTS").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("VIDU_GW_SKIP_REDIS_TESTS=1: skipping a test that needs redis-server");
    }
    skip
}

impl RedisServer {
    /// Starts a server and waits until it listens. The error says how to install `redis-server` when it is
    /// missing.
    pub fn start() -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free loopback port: {e}"))?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start redis-server ({e}): install it (Debian: `apt-get install redis-server`) or set \
                     VIDU_GW_SKIP_REDIS_TESTS=1 to skip the Redis tests"
                )
            })?;
        let server = Self {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server did not listen on port {port} within 10 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(server)
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers — a Redis that hangs.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
