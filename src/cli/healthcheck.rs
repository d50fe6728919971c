//! `vidu-gateway healthcheck`: one `GET /healthz` over a plain TCP connection, exit 0 on 200 and 1 otherwise —
//! for container health checks in images without a shell or curl.
//!
//! The address is `--url`, else the configuration's `server.listen` (from the file or the built-in one, with the
//! `VIDU_GW__SERVER__LISTEN` override; `0.0.0.0`/`[::]` are probed on loopback). Only that key is read: a probe
//! never reads secrets, and a config edit elsewhere in the file cannot make a running gateway look unhealthy.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::{BUILTIN_CONFIG, ServerSettings};

/// Where to send the probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, also the `Host` header.
    pub authority: String,
    pub path: String,
}

impl Target {
    /// An `http://host[:port][/path]` URL (no TLS: the probe runs beside the gateway). No path = `/healthz`.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("--url {url:?}: use an http:// URL such as http://127.0.0.1:8080/healthz")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/healthz"),
        };
        if authority.is_empty() {
            return Err(format!("--url {url:?} names no host"));
        }
        let has_port = match authority.rfind(']') {
            Some(end) => authority[end..].contains(':'),
            None => authority.contains(':'),
        };
        Ok(Self {
            authority: if has_port {
                authority.to_owned()
            } else {
                format!("{authority}:80")
            },
            path: path.to_owned(),
        })
    }

    /// `/healthz` on a listen address; an unspecified address (all interfaces) is probed on loopback.
    pub fn from_listen(listen: &str) -> Result<Self, String> {
        let addr: SocketAddr = listen
            .parse()
            .map_err(|_| format!("server.listen = {listen:?} is not an address:port"))?;
        let ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Ok(Self {
            authority: SocketAddr::new(ip, addr.port()).to_string(),
            path: "/healthz".into(),
        })
    }
}

/// `server.listen` of `path` (or of the built-in file), with the environment's override.
pub fn listen_address(path: Option<&Path>, env_listen: Option<String>) -> Result<String, String> {
    if let Some(listen) = env_listen {
        return Ok(listen);
    }
    let text = match path {
        None => BUILTIN_CONFIG.to_owned(),
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| format!("cannot read config file {}: {e}", p.display()))?,
    };
    let origin = path.map_or_else(
        || "the built-in config".to_owned(),
        |p| p.display().to_string(),
    );
    // Never echo the file's text: it may hold secrets on the line a parser would quote.
    let table: toml::Table = text
        .parse()
        .map_err(|_| format!("{origin} is not valid TOML: run check-config for details"))?;
    match table.get("server").and_then(|s| s.get("listen")) {
        None => Ok(ServerSettings::default().listen),
        Some(toml::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!(
            "{origin}: server.listen must be a string such as \"127.0.0.1:8080\""
        )),
    }
}

/// Sends `GET path` and returns the answer's status code; every step within `timeout` in total.
pub fn probe(target: &Target, timeout: Duration) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {} ms", timeout.as_millis()))
    };
    let addrs: Vec<SocketAddr> = target
        .authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", target.authority))?
        .collect();
    let mut last_error = format!("{} resolves to no address", target.authority);
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = format!("cannot connect to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last_error)?;
    let io = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            format!("no answer within {} ms", timeout.as_millis())
        } else {
            format!("{}: {e}", target.authority)
        }
    };
    stream.set_write_timeout(Some(left()?)).map_err(io)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: vidu-gateway-healthcheck\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        stream.set_read_timeout(Some(left()?)).map_err(io)?;
        let n = stream.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    status_code(&head).ok_or_else(|| {
        format!(
            "{} did not answer HTTP (first bytes: {:?})",
            target.authority,
            String::from_utf8_lossy(&head[..head.len().min(40)])
        )
    })
}

/// The status code of an HTTP/1.x status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_listen_addresses_become_targets() {
        assert_eq!(
            Target::from_url("http://127.0.0.1:8080/healthz").unwrap(),
            Target {
                authority: "127.0.0.1:8080".into(),
                path: "/healthz".into()
            }
        );
        assert_eq!(Target::from_url("http://gw").unwrap().authority, "gw:80");
        assert_eq!(Target::from_url("http://gw").unwrap().path, "/healthz");
        assert_eq!(
            Target::from_url("http://[::1]:9/readyz").unwrap().authority,
            "[::1]:9"
        );
        assert_eq!(
            Target::from_url("http://[::1]/").unwrap().authority,
            "[::1]:80"
        );
        assert!(Target::from_url("https://gw/healthz").is_err());
        assert_eq!(
            Target::from_listen("0.0.0.0:8080").unwrap().authority,
            "127.0.0.1:8080"
        );
        assert_eq!(
            Target::from_listen("[::]:8080").unwrap().authority,
            "[::1]:8080"
        );
        assert_eq!(
            Target::from_listen("10.0.0.5:8080").unwrap().authority,
            "10.0.0.5:8080"
        );
    }

    #[test]
    fn the_listen_address_comes_from_the_environment_the_file_or_the_default() {
        assert_eq!(
            listen_address(None, Some("0.0.0.0:1".into())).unwrap(),
            "0.0.0.0:1"
        );
        assert_eq!(listen_address(None, None).unwrap(), "127.0.0.1:8080");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gw.toml");
        std::fs::write(&p, "[server]\nlisten = \"0.0.0.0:9\"\n").unwrap();
        assert_eq!(listen_address(Some(&p), None).unwrap(), "0.0.0.0:9");
        std::fs::write(&p, "[upstream]\napi_key = \"s3cret\n").unwrap();
        let e = listen_address(Some(&p), None).unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn only_an_http_status_line_counts() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b""), None);
    }
}
