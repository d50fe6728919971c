//! What the logs look like to ops: `pretty` logs written to a file or a pipe carry no ANSI colour codes.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vidu_gateway::config::LogFormat;

use crate::helpers::*;

#[test]
fn pretty_logs_to_a_pipe_have_no_ansi_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let config = TestConfig::new("http://127.0.0.1:9").telemetry(|t| {
        t.log_level = "info".into();
        t.log_format = LogFormat::Pretty;
    });
    std::fs::write(&path, config.text()).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_vidu-gateway"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains("listening") {
        assert!(
            Instant::now() < deadline,
            "no listening line: {:?}",
            String::from_utf8_lossy(&seen)
        );
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.extend(chunk);
        }
    }
    assert!(
        !seen.contains(&0x1b),
        "ANSI escape in piped logs: {:?}",
        String::from_utf8_lossy(&seen)
    );
}
