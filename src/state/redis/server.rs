//! A real `redis-server` for tests (the crate's own and the black-box ones in `tests/`): started on a free loopback port with nothing persisted, stopped by PID when
//! dropped. Without `redis-server` on PATH the test fails with the command that installs it, unless
//! `VIDU_GW_SKIP_REDIS_TESTS=1` is set (local runs only; CI installs it and never skips).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: std::sync::Mutex<Option<Child>>,
    port: u16,
    /// `requirepass`, when set.
    password: Option<String>,
    /// TLS only (`--tls-port`): the folder holding the test CA and the server's certificate.
    tls: Option<std::path::PathBuf>,
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
        Self::start_with(None, false)
    }

    /// A server that wants `password` (`requirepass`); [`url`](Self::url) does not hold it.
    pub fn start_with_password(password: &str) -> Result<Self, String> {
        Self::start_with(Some(password.to_owned()), false)
    }

    /// A server that speaks TLS only, with a certificate for 127.0.0.1 signed by a CA made for it (by the
    /// `openssl` command): [`url`](Self::url) is `rediss://`, [`ca_file`](Self::ca_file) the CA to trust.
    pub fn start_tls() -> Result<Self, String> {
        Self::start_with(None, true)
    }

    fn start_with(password: Option<String>, tls: bool) -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free loopback port: {e}"))?;
        let tls = if tls {
            Some(make_certificates(port)?)
        } else {
            None
        };
        let server = Self {
            child: std::sync::Mutex::new(None),
            port,
            password,
            tls,
        };
        server.spawn()?;
        Ok(server)
    }

    /// The CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        self.tls.as_ref().map(|d| d.join("ca.pem"))
    }

    fn spawn(&self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut args: Vec<String> = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .map(String::from)
            .into();
        match &self.tls {
            None => args.extend(["--port".into(), port]),
            Some(dir) => {
                let file = |name: &str| dir.join(name).display().to_string();
                args.extend([
                    "--port".into(),
                    "0".into(),
                    "--tls-port".into(),
                    port,
                    "--tls-cert-file".into(),
                    file("server.pem"),
                    "--tls-key-file".into(),
                    file("server.key"),
                    "--tls-ca-cert-file".into(),
                    file("ca.pem"),
                    "--tls-auth-clients".into(),
                    "no".into(),
                ]);
            }
        }
        if let Some(password) = &self.password {
            args.extend(["--requirepass".into(), password.clone()]);
        }
        let port = self.port;
        let child = Command::new("redis-server")
            .args(&args)
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
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.tls {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the `openssl` command in a fresh folder.
fn make_certificates(port: u16) -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("vidu-gw-redis-tls-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .map_err(|e| e.to_string())?;
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=vidu-gateway test CA",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .map_err(|e| {
                format!("cannot run openssl ({e}): install it (Debian: `apt-get install openssl`)")
            })?;
        if !out.status.success() {
            return Err(format!(
                "openssl {}: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(dir)
}

/// The commands clients sent since [`RedisServer::monitor`] started; commands a script ran are not round trips
/// and are left out.
pub struct Monitor {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stream: std::net::TcpStream,
}

impl Monitor {
    /// Each round trip a client made, as `command arg1 …` (waits briefly for the feed to catch up).
    /// (The background loops' scripts — reconciler, relay outbox, reservation list — are left out: they belong to
    /// no request.)
    pub fn round_trips(&self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(100));
        let background = super::background_script_hashes();
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| !l.contains(" lua] ") && !l.contains("[0 lua]"))
            .filter(|l| !background.iter().any(|sha| l.contains(sha.as_str())))
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
