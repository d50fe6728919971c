//! `deploy/` as far as it can run here: the `healthcheck` subcommand the Dockerfile uses,
//! the Dockerfile's ports and health check against the container's effective config, and the systemd unit's
//! paths and permissions against its own install steps under `DynamicUser=yes`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::helpers::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn deploy_file(name: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join("deploy").join(name)).unwrap()
}

async fn cli(args: Vec<String>, envs: Vec<(String, String)>) -> (i32, String, String) {
    actix_web::rt::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_cli(&args, &envs)
    })
    .await
    .unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[actix_web::test]
async fn the_healthcheck_subcommand_exits_0_against_a_running_gateway() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let url = format!("http://127.0.0.1:{}/healthz", app.port);
    let (code, out, err) = cli(strings(&["healthcheck", "--url", &url]), vec![]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("healthy"), "{out}");
    // From a config file: all interfaces are probed on loopback.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"0.0.0.0:{}\"\n", app.port),
    )
    .unwrap();
    let args = strings(&["healthcheck", "--config", cfg.to_str().unwrap()]);
    let (code, _, err) = cli(args, vec![]).await;
    assert_eq!(code, 0, "{err}");
    // The environment's listen address wins over the file's, as for `serve`.
    std::fs::write(&cfg, "[server]\nlisten = \"127.0.0.1:1\"\n").unwrap();
    let args = strings(&["healthcheck", "--config", cfg.to_str().unwrap()]);
    let env = vec![(
        "VIDU_GW__SERVER__LISTEN".to_owned(),
        format!("0.0.0.0:{}", app.port),
    )];
    let (code, _, err) = cli(args, env).await;
    assert_eq!(code, 0, "{err}");
}

#[actix_web::test]
async fn the_healthcheck_subcommand_exits_1_on_a_closed_port_an_error_status_or_silence() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{closed}/healthz");
    let (code, out, err) = cli(strings(&["healthcheck", "--url", &url]), vec![]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("unhealthy") && err.contains("cannot connect"),
        "{err}"
    );

    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let url = format!("http://127.0.0.1:{}/no-such-path", app.port);
    let (code, _, err) = cli(strings(&["healthcheck", "--url", &url]), vec![]).await;
    assert_eq!(code, 1);
    assert!(err.contains("answered 404"), "{err}");

    // A listener that never answers: the probe gives up on time.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/healthz", silent.local_addr().unwrap());
    let started = Instant::now();
    let args = strings(&["healthcheck", "--url", &url, "--timeout-ms", "300"]);
    let (code, _, err) = cli(args, vec![]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no answer within 300 ms"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(silent);
}

/// One Dockerfile instruction: keyword and arguments (continuation lines joined).
fn dockerfile() -> Vec<(String, String)> {
    let text = deploy_file("Dockerfile").replace("\\\n", " ");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(k, rest)| (k.to_ascii_uppercase(), rest.trim().to_owned()))
        .collect()
}

/// The final stage's instructions (after the last FROM).
fn final_stage() -> Vec<(String, String)> {
    let all = dockerfile();
    let last_from = all.iter().rposition(|(k, _)| k == "FROM").unwrap();
    all[last_from + 1..].to_vec()
}

fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|_| panic!("not an exec-form JSON array: {args}"))
}

/// `--flag value` in an argument list.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// The container's config: the file COPY'd to where CMD points, with the image's ENV overrides (and a key file,
/// as a deployment mounts one).
fn container_settings(key_file: &Path) -> vidu_gateway::config::Settings {
    let stage = final_stage();
    let entrypoint = exec_form(&stage.iter().rfind(|(k, _)| k == "ENTRYPOINT").unwrap().1);
    let cmd = exec_form(&stage.iter().rfind(|(k, _)| k == "CMD").unwrap().1);
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    assert_eq!(args.get(1).map(String::as_str), Some("serve"), "{args:?}");
    let config_path = flag(&args, "--config").expect("CMD passes --config");
    let source = stage
        .iter()
        .filter(|(k, _)| k == "COPY")
        .filter_map(|(_, v)| {
            let parts: Vec<&str> = v.split_whitespace().collect();
            (parts.last() == Some(&config_path)).then(|| parts[parts.len() - 2].to_owned())
        })
        .next()
        .unwrap_or_else(|| panic!("no COPY puts a file at {config_path}"));
    let mut env: HashMap<String, String> = stage
        .iter()
        .filter(|(k, _)| k == "ENV")
        .filter_map(|(_, v)| v.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| k.starts_with("VIDU_GW__"))
        .collect();
    env.insert(
        "VIDU_GW__UPSTREAM__API_KEY_FILE".into(),
        key_file.display().to_string(),
    );
    vidu_gateway::config::load_with_env(Some(&Path::new(ROOT).join(source)), env)
        .unwrap_or_else(|e| panic!("the container's config is invalid: {e}"))
        .settings
}

fn key_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let key = dir.path().join("vidu_api_key");
    std::fs::write(&key, "deploy-test-key\n").unwrap();
    key
}

#[test]
fn the_dockerfile_exposes_every_port_the_container_config_listens_on() {
    let dir = tempfile::tempdir().unwrap();
    let settings = container_settings(&key_file(&dir));
    let exposed: Vec<u16> = final_stage()
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, v)| {
            v.split_whitespace()
                .map(|p| p.split('/').next().unwrap().parse().unwrap())
                .collect::<Vec<u16>>()
        })
        .collect();
    let listens = [
        Some(&settings.server.listen),
        settings.server.metrics_listen.as_ref(),
    ];
    let listens: Vec<SocketAddr> = listens
        .into_iter()
        .flatten()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(
        listens.len(),
        2,
        "the API and /metrics on their own listener"
    );
    for addr in listens {
        assert!(
            exposed.contains(&addr.port()),
            "{addr} is not EXPOSEd: {exposed:?}"
        );
        assert!(
            addr.ip().is_unspecified(),
            "{addr} cannot be reached from outside the container"
        );
    }
}

#[test]
fn the_dockerfile_health_check_is_the_binarys_own_probe_of_the_served_address() {
    let stage = final_stage();
    let (_, health) = stage
        .iter()
        .find(|(k, _)| k == "HEALTHCHECK")
        .expect("a HEALTHCHECK");
    assert!(
        !health.contains("/dev/tcp") && !health.contains("/bin/sh"),
        "{health}"
    );
    let (options, command) = health.split_once("CMD").unwrap();
    let probe = exec_form(command.trim());
    let binary = stage
        .iter()
        .filter(|(k, _)| k == "COPY")
        .find_map(|(_, v)| {
            v.contains("/target/release/vidu-gateway")
                .then(|| v.split_whitespace().last().unwrap().to_owned())
        })
        .unwrap();
    assert_eq!(probe[0], binary, "{probe:?}");
    assert_eq!(probe[1], "healthcheck", "{probe:?}");
    // It probes what `serve` serves: the same config file (whose listen the image's ENV sets), or that port.
    let cmd = exec_form(&stage.iter().rfind(|(k, _)| k == "CMD").unwrap().1);
    let dir = tempfile::tempdir().unwrap();
    let settings = container_settings(&key_file(&dir));
    match (flag(&probe, "--config"), flag(&probe, "--url")) {
        (Some(config), None) => assert_eq!(Some(config), flag(&cmd, "--config")),
        (None, Some(url)) => {
            let port = settings.server.listen.rsplit(':').next().unwrap();
            assert!(url.contains(&format!(":{port}/healthz")), "{url}");
        }
        other => panic!("the probe names its target by --config or --url: {other:?}"),
    }
    // The probe gives up before Docker does.
    let docker_timeout: u64 = options
        .split_whitespace()
        .find_map(|o| o.strip_prefix("--timeout="))
        .and_then(|t| t.strip_suffix('s'))
        .map(|t| t.parse().unwrap())
        .expect("HEALTHCHECK --timeout=<n>s");
    let probe_ms: u64 = flag(&probe, "--timeout-ms")
        .unwrap_or("2000")
        .parse()
        .unwrap();
    assert!(
        probe_ms < docker_timeout * 1000,
        "{probe_ms} ms vs {docker_timeout} s"
    );
}

/// `install [-D] -m MODE [-o U] [-g G] SRC DEST` lines of the unit's header comment.
struct Install {
    mode: u32,
    owner: Option<String>,
    source: String,
    dest: String,
}

fn unit() -> (Vec<Install>, Vec<(String, String)>) {
    let text = deploy_file("vidu-gateway.service");
    let mut installs = Vec::new();
    for line in text.lines() {
        let Some(cmd) = line.strip_prefix('#').map(str::trim) else {
            continue;
        };
        assert!(
            !cmd.starts_with("chown"),
            "no chown under DynamicUser: {cmd}"
        );
        let Some(rest) = cmd.strip_prefix("install ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let (mut mode, mut owner, mut paths) = (None, None, Vec::new());
        let mut i = 0;
        while i < words.len() {
            match words[i] {
                "-D" => {}
                "-m" => {
                    i += 1;
                    mode = Some(u32::from_str_radix(words[i], 8).unwrap());
                }
                "-o" | "-g" => {
                    i += 1;
                    owner = Some(words[i].to_owned());
                }
                w if w.starts_with('(') => break, // prose after the command
                w => paths.push(w.to_owned()),
            }
            i += 1;
        }
        assert_eq!(paths.len(), 2, "install SRC DEST: {cmd}");
        // `install SRC DIR/` installs DIR/<name of SRC>.
        let dest = match paths[1].strip_suffix('/') {
            Some(dir) => format!("{dir}/{}", paths[0].rsplit('/').next().unwrap()),
            None => paths[1].clone(),
        };
        installs.push(Install {
            mode: mode.unwrap_or_else(|| panic!("install without -m: {cmd}")),
            owner,
            source: paths[0].clone(),
            dest,
        });
    }
    let entries = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    (installs, entries)
}

/// The credential a path names when it is in the credentials directory.
fn credential(path: &str) -> Option<&str> {
    path.strip_prefix("%d/")
        .or_else(|| path.strip_prefix("${CREDENTIALS_DIRECTORY}/"))
        .or_else(|| path.strip_prefix("$CREDENTIALS_DIRECTORY/"))
}

#[test]
fn the_systemd_unit_and_its_install_steps_agree_under_dynamic_user() {
    let (installs, entries) = unit();
    let get = |k: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("DynamicUser"), ["yes"]);
    let installed = |dest: &str| installs.iter().find(|i| i.dest == dest);
    // Nothing can be owned by the service's user: it does not exist until the service starts.
    for i in &installs {
        assert!(
            i.owner.as_deref().is_none_or(|o| o == "root"),
            "{} is given to {:?}, a user that DynamicUser does not have",
            i.dest,
            i.owner
        );
    }
    let credentials: HashMap<&str, &str> = get("LoadCredential")
        .into_iter()
        .map(|v| v.split_once(':').unwrap())
        .collect();
    // Each credential's source is installed, root-only (systemd reads it as root and hands a private copy).
    for (name, source) in &credentials {
        let i = installed(source)
            .unwrap_or_else(|| panic!("credential {name}: {source} is never installed"));
        assert_eq!(
            i.mode & 0o077,
            0,
            "{source} holds a secret: 0600 or stricter"
        );
    }
    // Every path in the credentials directory is a loaded credential.
    let mut referenced = Vec::new();
    for value in get("Environment")
        .into_iter()
        .chain(get("ExecStart"))
        .chain(get("ExecStartPre"))
    {
        for word in value.split(|c: char| c.is_whitespace() || c == '=') {
            if let Some(name) = credential(word) {
                assert!(
                    credentials.contains_key(name),
                    "{word} is not a LoadCredential="
                );
                referenced.push(name.to_owned());
            }
        }
    }
    assert!(
        !referenced.is_empty(),
        "the enterprise key reaches the service as a credential"
    );
    // The binary is where ExecStart runs it; the config is one file, readable by the dynamic user.
    let exec_start: Vec<&str> = get("ExecStart")[0].split_whitespace().collect();
    let binary =
        installed(exec_start[0]).unwrap_or_else(|| panic!("{} is never installed", exec_start[0]));
    assert_eq!(
        binary.mode & 0o005,
        0o005,
        "the binary is executable by any user"
    );
    let config = exec_start
        .iter()
        .position(|w| *w == "--config")
        .map(|i| exec_start[i + 1])
        .unwrap();
    for pre in get("ExecStartPre") {
        assert!(
            pre.contains(&format!("--config {config}")),
            "{pre} checks another file than {config}"
        );
    }
    let source = match credential(config) {
        Some(name) => {
            let source = credentials
                .get(name)
                .unwrap_or_else(|| panic!("{config} is not loaded"));
            installed(source).unwrap().source.clone()
        }
        None => {
            let i = installed(config).unwrap_or_else(|| panic!("{config} is never installed"));
            assert_eq!(
                i.mode & 0o004,
                0o004,
                "{config} is installed {:o}: the dynamic user (neither owner nor group) cannot read it",
                i.mode
            );
            i.source.clone()
        }
    };
    // That file is the shipped production config; with the key as the unit hands it, it is valid, and its
    // ledger is in the state directory (the only writable place under ProtectSystem=strict).
    assert!(Path::new(ROOT).join(&source).exists(), "{source}");
    let creds = tempfile::tempdir().unwrap();
    let mut env = HashMap::new();
    for value in get("Environment") {
        let (k, v) = value.split_once('=').unwrap();
        let v = match credential(v) {
            Some(name) => {
                let path = creds.path().join(name);
                std::fs::write(&path, "unit-test-key\n").unwrap();
                path.display().to_string()
            }
            None => v.to_owned(),
        };
        env.insert(k.to_owned(), v);
    }
    let settings = vidu_gateway::config::load_with_env(Some(&Path::new(ROOT).join(&source)), env)
        .unwrap_or_else(|e| panic!("{source} as the unit runs it: {e}"))
        .settings;
    let state_dir = format!("/var/lib/{}", get("StateDirectory")[0]);
    assert!(
        settings.state.ledger_path.starts_with(&state_dir),
        "{} is outside {state_dir}",
        settings.state.ledger_path.display()
    );
    assert_eq!(get("WorkingDirectory"), [state_dir.as_str()]);
    assert!(get("ProtectSystem").contains(&"strict"));
}

#[test]
fn production_toml_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir).display().to_string();
    let path = Path::new(ROOT).join("deploy/production.toml");
    let (code, out, err) = run_cli(
        &["check-config", "--config", path.to_str().unwrap()],
        &[("VIDU_GW__UPSTREAM__API_KEY_FILE", &key)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("is valid"), "{err}");
    assert!(!out.contains("deploy-test-key"));
}
