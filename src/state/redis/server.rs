//! A real `redis-server` for tests (the crate's own and the black-box ones in `tests/`): started on a free loopback port with nothing persisted, stopped by PID when
//! dropped. Without `redis-server` on PATH the test fails with the command that installs it, unless
//! `VIDU_GW_SKIP_REDIS_TESTS=1` is set (local runs only; CI installs it and never skips).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: std::sync::Mutex<Option<Child>>,
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
        let server = Self {
            child: std::sync::Mutex::new(None),
            port,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&self) -> Result<(), String> {
        let port = self.port;
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
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server did not listen on port {port} within 10 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Kills the server (its data is gone: nothing is persisted).
    pub fn stop(&self) {
        self.resume();
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped server again on the same port, empty.
    pub fn restart(&self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }

    /// Runs one command on its own connection (`INFO commandstats`, `FLUSHALL`, `DBSIZE`).
    pub fn query<T: ::redis::FromRedisValue>(&self, args: &[&str]) -> Result<T, String> {
        let client = ::redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        let mut conn = client.get_connection().map_err(|e| e.to_string())?;
        let mut cmd = ::redis::cmd(args.first().copied().unwrap_or("PING"));
        for a in args.iter().skip(1) {
            cmd.arg(*a);
        }
        cmd.query(&mut conn).map_err(|e| e.to_string())
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
        if let Some(child) = self
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Watches every command clients send (`MONITOR`), from now on.
    pub fn monitor(&self) -> Result<Monitor, String> {
        use std::io::{BufRead, BufReader, Write};
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        stream
            .write_all(b"MONITOR\r\n")
            .map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let mut ok = String::new();
        reader.read_line(&mut ok).map_err(|e| e.to_string())?;
        if !ok.starts_with("+OK") {
            return Err(format!("MONITOR answered {ok:?}"));
        }
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = lines.clone();
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                seen.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        Ok(Monitor { lines, stream })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The commands clients sent since [`RedisServer::monitor`] started; commands a script ran are not round trips
/// and are left out.
pub struct Monitor {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stream: std::net::TcpStream,
}

impl Monitor {
    /// Each round trip a client made, as `command arg1 …` (waits briefly for the feed to catch up).
    pub fn round_trips(&self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(100));
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| !l.contains(" lua] ") && !l.contains("[0 lua]"))
            .filter_map(|l| l.split_once("] ").map(|(_, cmd)| cmd.to_owned()))
            .collect()
    }

    /// Forgets what was seen so far.
    pub fn clear(&self) {
        std::thread::sleep(Duration::from_millis(100));
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}
