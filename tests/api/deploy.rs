//! `deploy/` as far as it can run here: the `healthcheck` subcommand the Dockerfile uses,
//! the Dockerfile's ports and health check against the container's effective config, and the systemd unit's
//! paths and permissions against its own install steps under `DynamicUser=yes`; `compose.yaml` (Redis, the
//! gateway replicas, the load balancer) against the gateway's own reading of `compose-gateway.toml`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

use crate::helpers::*;

pub(crate) const ROOT: &str = env!("CARGO_MANIFEST_DIR");

pub(crate) fn deploy_file(name: &str) -> String {
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
    let closed = closed_port();
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
pub(crate) fn final_stage() -> Vec<(String, String)> {
    let all = dockerfile();
    let last_from = all.iter().rposition(|(k, _)| k == "FROM").unwrap();
    all[last_from + 1..].to_vec()
}

pub(crate) fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|_| panic!("not an exec-form JSON array: {args}"))
}

/// `--flag value` in an argument list.
pub(crate) fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// The image's default command line: ENTRYPOINT then CMD of the final stage, each unless overridden.
pub(crate) fn image_args(entrypoint: Option<Vec<String>>, cmd: Option<Vec<String>>) -> Vec<String> {
    let stage = final_stage();
    let last = |name: &str| exec_form(&stage.iter().rfind(|(k, _)| k == name).unwrap().1);
    let entrypoint = entrypoint.unwrap_or_else(|| last("ENTRYPOINT"));
    entrypoint
        .into_iter()
        .chain(cmd.unwrap_or_else(|| last("CMD")))
        .collect()
}

/// The image's ENV (final stage), every variable.
pub(crate) fn image_env() -> HashMap<String, String> {
    final_stage()
        .iter()
        .filter(|(k, _)| k == "ENV")
        .filter_map(|(_, v)| v.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The container's config: the file COPY'd to where CMD points, with the image's ENV overrides (and a key file,
/// as a deployment mounts one).
fn container_settings(key_file: &Path) -> vidu_gateway::config::Settings {
    let stage = final_stage();
    let args = image_args(None, None);
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
    let mut env = image_env();
    env.retain(|k, _| k.starts_with("VIDU_GW__"));
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

// deploy/compose.yaml: Redis, the gateway replicas and the load balancer, read with a real YAML parser and checked
// against what the gateway itself makes of deploy/compose-gateway.toml.

/// A YAML node as JSON, merge keys (`<<: *anchor`, as Compose applies them) resolved: the merged mappings give
/// the keys the mapping does not set itself (the first merged mapping wins among them).
pub(crate) fn yaml_to_json(node: &Yaml) -> Value {
    match node {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => Value::from(r.parse::<f64>().unwrap()),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(hash) => {
            let (mut merged, mut own) = (Map::new(), Map::new());
            for (k, v) in hash {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => panic!("unsupported mapping key {other:?}"),
                };
                if key != "<<" {
                    own.insert(key, yaml_to_json(v));
                    continue;
                }
                let sources = match yaml_to_json(v) {
                    Value::Array(maps) => maps,
                    map => vec![map],
                };
                for source in sources {
                    let Value::Object(source) = source else {
                        panic!("`<<` merges a mapping: {source}");
                    };
                    for (mk, mv) in source {
                        merged.entry(mk).or_insert(mv);
                    }
                }
            }
            merged.extend(own);
            Value::Object(merged)
        }
        Yaml::Alias(_) | Yaml::BadValue => panic!("unresolved YAML node {node:?}"),
    }
}

/// deploy/compose.yaml as Compose reads it.
fn compose() -> Value {
    let docs = YamlLoader::load_from_str(&deploy_file("compose.yaml"))
        .unwrap_or_else(|e| panic!("deploy/compose.yaml is not valid YAML: {e}"));
    assert_eq!(docs.len(), 1, "one YAML document");
    yaml_to_json(&docs[0])
}

/// A path of the compose file (relative to deploy/, where Compose resolves it) on this machine.
fn compose_path(relative: &str) -> std::path::PathBuf {
    Path::new(ROOT).join("deploy").join(relative)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A command, entrypoint or health check test: the exec form (a list) or a string split on whitespace.
pub(crate) fn words(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Array(items) => Some(
            items
                .iter()
                .map(|i| match i {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
        ),
        Value::String(s) => Some(s.split_whitespace().map(str::to_owned).collect()),
        _ => None,
    }
}

pub(crate) fn text(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string: {v}"))
}

/// `environment:` as a mapping or as a list of `KEY=VALUE`.
fn environment(service: &Value) -> HashMap<String, String> {
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                let (k, v) = text(i).split_once('=').unwrap_or((text(i), ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => HashMap::new(),
    }
}

/// `volumes:` of a service as (source, target): `src:dst[:mode]` or the long form.
fn mounts(service: &Value) -> Vec<(String, String)> {
    let Some(items) = service["volumes"].as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|m| match m {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                assert!(parts.len() >= 2, "a volume without a target: {s}");
                (parts[0].to_owned(), parts[1].to_owned())
            }
            long => (
                text(&long["source"]).to_owned(),
                text(&long["target"]).to_owned(),
            ),
        })
        .collect()
}

/// `secrets:` of a service as (secret name, path in the container): `/run/secrets/<name>` unless a target says
/// otherwise.
fn secret_mounts(service: &Value) -> Vec<(String, String)> {
    let Some(items) = service["secrets"].as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|s| match s {
            Value::String(name) => (name.clone(), format!("/run/secrets/{name}")),
            long => {
                let name = text(&long["source"]).to_owned();
                let target = long["target"].as_str().unwrap_or(&name).to_owned();
                let target = if target.starts_with('/') {
                    target
                } else {
                    format!("/run/secrets/{target}")
                };
                (name, target)
            }
        })
        .collect()
}

/// A Compose duration (`40s`, `1m30s`, `500ms`) in milliseconds.
pub(crate) fn compose_duration_ms(s: &str) -> u64 {
    let (mut total, mut number, mut unit) = (0.0_f64, String::new(), String::new());
    let mut flush = |number: &mut String, unit: &mut String| {
        if number.is_empty() {
            return;
        }
        let n: f64 = number.parse().unwrap();
        let ms = match unit.as_str() {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1_000.0,
            "ms" => 1.0,
            "us" => 0.001,
            other => panic!("unknown duration unit {other:?} in {s}"),
        };
        total += n * ms;
        number.clear();
        unit.clear();
    };
    for c in s.trim().chars() {
        if c.is_ascii_digit() || c == '.' {
            if !unit.is_empty() {
                flush(&mut number, &mut unit);
            }
            number.push(c);
        } else {
            unit.push(c);
        }
    }
    flush(&mut number, &mut unit);
    total as u64
}

/// What the compose file runs: the Redis service, the gateway replicas (built from deploy/Dockerfile) and the
/// load balancer, by service name.
struct Topology {
    doc: Value,
    redis: String,
    gateways: Vec<String>,
    lb: String,
}

impl Topology {
    fn read() -> Self {
        let doc = compose();
        let services = doc["services"].as_object().expect("a `services:` mapping");
        let image = |s: &Value| s["image"].as_str().unwrap_or("").to_owned();
        let pick = |f: &dyn Fn(&Value) -> bool| -> Vec<String> {
            services
                .iter()
                .filter(|(_, s)| f(s))
                .map(|(n, _)| n.clone())
                .collect()
        };
        let redis = pick(&|s| {
            let i = image(s);
            i.starts_with("redis") || i.contains("valkey")
        });
        let gateways = pick(&|s| {
            let build = match &s["build"] {
                Value::Null => return false,
                Value::String(context) => &serde_json::json!({ "context": context }),
                build => build,
            };
            let context = build["context"].as_str().unwrap_or(".");
            let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            same_file(
                &compose_path(context).join(dockerfile),
                &compose_path("Dockerfile"),
            )
        });
        let lb = pick(&|s| {
            let i = image(s);
            i.starts_with("nginx") || i.starts_with("haproxy")
        });
        assert_eq!(redis.len(), 1, "one Redis service: {redis:?}");
        assert!(
            gateways.len() >= 2,
            "at least two gateway replicas built from deploy/Dockerfile: {gateways:?}"
        );
        assert_eq!(lb.len(), 1, "one load balancer (nginx or haproxy): {lb:?}");
        Self {
            redis: redis[0].clone(),
            gateways,
            lb: lb[0].clone(),
            doc,
        }
    }

    fn service(&self, name: &str) -> &Value {
        &self.doc["services"][name]
    }

    /// The named volume a service mounts at `target`.
    fn named_volume_at(&self, service: &str, target: &Path) -> Option<String> {
        mounts(self.service(service))
            .into_iter()
            .find(|(source, t)| Path::new(t) == target && !source.starts_with(['.', '/', '~']))
            .map(|(source, _)| source)
            .inspect(|source| {
                assert!(
                    self.doc["volumes"].get(source).is_some(),
                    "{service} mounts the volume {source}, which the top-level `volumes:` does not declare"
                );
            })
    }
}

/// One gateway replica as Compose runs it: its arguments, the config file it is given (as mounted) and the
/// settings the gateway's own loader makes of it, with the image's ENV, the service's environment and dummy
/// files standing for the compose secrets at the paths the config names.
struct Replica {
    args: Vec<String>,
    config_file: std::path::PathBuf,
    settings: vidu_gateway::config::Settings,
    /// `*_file` key (`state.redis_password_file`) → the compose secret that provides it.
    secret_of_key: HashMap<String, String>,
}

fn replica(topology: &Topology, name: &str, dir: &tempfile::TempDir) -> Replica {
    let service = topology.service(name);
    let args = image_args(words(&service["entrypoint"]), words(&service["command"]));
    assert_eq!(
        args.get(1).map(String::as_str),
        Some("serve"),
        "{name}: {args:?}"
    );
    let config_path = flag(&args, "--config")
        .unwrap_or_else(|| panic!("{name} runs `serve --config <file>`: {args:?}"));
    let (source, _) = mounts(service)
        .into_iter()
        .find(|(_, target)| target == config_path)
        .unwrap_or_else(|| {
            panic!("{name}: nothing is mounted at {config_path}, the file it serves")
        });
    let config_file = compose_path(&source);
    assert!(
        same_file(&config_file, &compose_path("compose-gateway.toml")),
        "{name} is given {source} at {config_path}, not deploy/compose-gateway.toml"
    );

    // The environment the process sees: the image's ENV, then the service's.
    let mut env = image_env();
    env.extend(environment(service));
    env.retain(|k, _| k.starts_with("VIDU_GW__"));

    // Every `*_file` the process reads (from the file or its env) is a compose secret mounted at that path.
    let text = std::fs::read_to_string(&config_file).unwrap();
    let mounted = secret_mounts(service);
    let declared = topology.doc["secrets"].as_object();
    let mut secret_of_key = HashMap::new();
    for (key, path) in secret_files(&text, &env, name) {
        let (secret, _) = mounted
            .iter()
            .find(|(_, target)| *target == path)
            .unwrap_or_else(|| {
                panic!("{name}: {key} = {path} is not a compose secret mounted there")
            });
        let source = declared.and_then(|d| d.get(secret)).unwrap_or_else(|| {
            panic!(
                "{name} mounts the secret {secret}, which the top-level `secrets:` does not declare"
            )
        });
        assert!(
            source.get("file").is_some() || source.get("environment").is_some(),
            "the secret {secret} names its file: {source}"
        );
        let stand_in = stand_in_secret(dir, &format!("{name}-{secret}"), &key);
        env.insert(env_var(&key), stand_in.display().to_string());
        secret_of_key.insert(key, secret.clone());
    }
    let settings = vidu_gateway::config::load_with_env(Some(&config_file), env)
        .unwrap_or_else(|e| {
            panic!("{name}: deploy/compose-gateway.toml as compose runs it is invalid: {e}")
        })
        .settings;
    Replica {
        args,
        config_file,
        settings,
        secret_of_key,
    }
}

/// The variable that overrides a configuration key: `state.redis_password_file` → `VIDU_GW__STATE__REDIS_PASSWORD_FILE`.
pub(crate) fn env_var(key: &str) -> String {
    format!("VIDU_GW__{}", key.replace('.', "__")).to_ascii_uppercase()
}

/// Every `*_file` a gateway process reads, from its configuration file (`key_file = PATH` in any table) or its
/// `VIDU_GW__*` environment, as (configuration key, path in the container). Asserts on the way that no secret is
/// given inline, in the file or the environment (`whose` names the process in the message).
pub(crate) fn secret_files(
    config: &str,
    env: &HashMap<String, String>,
    whose: &str,
) -> Vec<(String, String)> {
    fn walk(table: &toml::Table, prefix: &str, whose: &str, out: &mut HashMap<String, String>) {
        for (key, value) in table {
            let path = format!("{prefix}{key}");
            match value {
                toml::Value::Table(inner) => walk(inner, &format!("{path}."), whose, out),
                toml::Value::String(file) if key.ends_with("_file") => {
                    out.insert(path, file.clone());
                }
                toml::Value::String(inline)
                    if ["api_key", "hs256_secret", "relay_secret", "secret"]
                        .contains(&key.as_str()) =>
                {
                    assert!(
                        inline.is_empty(),
                        "{whose}: {path} is inline in the configuration: use {key}_file and a mounted secret"
                    );
                }
                _ => {}
            }
        }
    }
    for secret in [
        "UPSTREAM__API_KEY",
        "AUTH__HS256_SECRET",
        "STATE__REDIS_URL",
        "CALLBACKS__RELAY_SECRET",
    ] {
        assert!(
            !env.contains_key(&format!("VIDU_GW__{secret}")),
            "{whose}: VIDU_GW__{secret} inline in its environment; give it as a *_file from a mounted secret"
        );
    }
    let raw: toml::Table = toml::from_str(config).unwrap();
    let mut files = HashMap::new();
    walk(&raw, "", whose, &mut files);
    for (var, path) in env {
        if let Some(key) = var.strip_prefix("VIDU_GW__")
            && key.ends_with("_FILE")
            && !path.is_empty()
        {
            files.insert(key.replace("__", ".").to_ascii_lowercase(), path.clone());
        }
    }
    let mut files: Vec<(String, String)> = files.into_iter().collect();
    files.sort();
    files
}

/// A file in `dir` standing for the secret `name` that a deployment mounts for the configuration key `key`: a
/// PEM certificate for a CA file, one line otherwise.
pub(crate) fn stand_in_secret(
    dir: &tempfile::TempDir,
    name: &str,
    key: &str,
) -> std::path::PathBuf {
    let path = dir.path().join(name);
    let content = if key.ends_with("ca_file") {
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_owned()
    } else {
        format!("deploy-test-{name}\n")
    };
    std::fs::write(&path, content).unwrap();
    path
}

/// `--flag VALUE` in a service's command line (joined).
pub(crate) fn command_flag(words: &[String], name: &str) -> Option<String> {
    let joined = words.join(" ");
    let tokens: Vec<&str> = joined.split_whitespace().collect();
    tokens
        .iter()
        .position(|t| *t == name)
        .and_then(|i| tokens.get(i + 1))
        .map(|v| v.to_string())
}

#[test]
fn the_compose_file_runs_redis_with_aof_behind_two_gateway_replicas_and_a_load_balancer() {
    let t = Topology::read();
    let redis = t.service(&t.redis);
    let command = words(&redis["command"]).expect("redis has a command");
    assert_eq!(
        command_flag(&command, "--appendonly").as_deref(),
        Some("yes"),
        "{command:?}"
    );
    assert_eq!(
        command_flag(&command, "--appendfsync").as_deref(),
        Some("everysec"),
        "{command:?}"
    );
    let data = t
        .named_volume_at(&t.redis, Path::new("/data"))
        .expect("Redis keeps /data (the AOF) on a named volume");
    assert!(!data.is_empty());
    assert!(
        redis["healthcheck"]["test"].is_array(),
        "redis has a health check"
    );
    // Start order: Redis healthy → every replica ready → the load balancer.
    for gw in &t.gateways {
        assert_eq!(
            t.service(gw)["depends_on"][&t.redis]["condition"],
            "service_healthy",
            "{gw} waits for a healthy {}",
            t.redis
        );
        assert_eq!(
            t.service(&t.lb)["depends_on"][gw]["condition"],
            "service_healthy",
            "{} waits for a healthy {gw}",
            t.lb
        );
        assert!(t.service(gw)["healthcheck"]["test"].is_array(), "{gw}");
    }
    for (name, service) in t.doc["services"].as_object().unwrap() {
        let restart = service["restart"].as_str().unwrap_or("no");
        assert!(
            ["always", "unless-stopped", "on-failure"]
                .iter()
                .any(|r| restart.starts_with(r)),
            "{name} has no restart policy ({restart})"
        );
    }
}

#[test]
fn every_compose_replica_loads_compose_gateway_toml_on_the_redis_service_with_secrets_from_compose()
{
    let t = Topology::read();
    let dir = tempfile::tempdir().unwrap();
    let redis = t.service(&t.redis);
    let redis_command = words(&redis["command"]).unwrap().join(" ");
    let mut spool_volumes = Vec::new();
    for gw in &t.gateways {
        let r = replica(&t, gw, &dir);
        let st = &r.settings.state;
        assert_eq!(
            st.backend,
            vidu_gateway::config::StateBackend::Redis,
            "{gw}"
        );
        let url = url::Url::parse(st.redis_url.expose()).unwrap();
        assert_eq!(
            url.host_str(),
            Some(t.redis.as_str()),
            "{gw}: state.redis_url"
        );
        let redis_port = command_flag(&words(&redis["command"]).unwrap(), "--port")
            .map_or(6379, |p| p.parse().unwrap());
        assert_eq!(
            url.port().unwrap_or(6379),
            redis_port,
            "{gw}: state.redis_url"
        );
        assert!(
            url.password().is_none(),
            "{gw}: the Redis password comes from a secret file, not the URL"
        );
        assert!(!st.key_prefix.is_empty());
        // The password file is read, and it is the secret Redis takes its requirepass from.
        assert!(
            st.redis_password.is_set(),
            "{gw}: state.redis_password_file"
        );
        let secret = &r.secret_of_key["state.redis_password_file"];
        let (_, in_redis) = secret_mounts(redis)
            .into_iter()
            .find(|(name, _)| name == secret)
            .unwrap_or_else(|| panic!("{} is not given the secret {secret}", t.redis));
        assert!(
            redis_command.contains("requirepass") && redis_command.contains(&in_redis),
            "redis takes requirepass from {in_redis}: {redis_command}"
        );
        assert!(
            r.secret_of_key.contains_key("upstream.api_key_file")
                && r.settings.upstream.api_key.is_set(),
            "{gw}: the Vidu key from a compose secret"
        );
        // The spool (fail_open) is on this replica's own volume.
        let spool_volume = st
            .spool_path
            .ancestors()
            .skip(1)
            .find_map(|dir| t.named_volume_at(gw, dir))
            .unwrap_or_else(|| {
                panic!(
                    "{gw}: state.spool_path {} is on no named volume",
                    st.spool_path.display()
                )
            });
        assert!(
            !spool_volumes.contains(&spool_volume),
            "{gw} shares the spool volume {spool_volume} with another replica"
        );
        spool_volumes.push(spool_volume);
        // Docker waits for the gateway's own shutdown before it kills it.
        let grace = t.service(gw)["stop_grace_period"]
            .as_str()
            .map_or(10_000, compose_duration_ms);
        assert!(
            grace > r.settings.server.shutdown_timeout_secs * 1000,
            "{gw}: stop_grace_period {grace} ms vs server.shutdown_timeout_secs {}",
            r.settings.server.shutdown_timeout_secs
        );
        assert!(r.config_file.exists() && r.args.len() >= 3);
    }
}

#[test]
fn the_compose_replicas_health_check_probes_readyz_on_the_port_their_config_listens_on() {
    let t = Topology::read();
    let dir = tempfile::tempdir().unwrap();
    let binary = final_stage()
        .iter()
        .filter(|(k, _)| k == "COPY")
        .find_map(|(_, v)| {
            v.contains("/target/release/vidu-gateway")
                .then(|| v.split_whitespace().last().unwrap().to_owned())
        })
        .unwrap();
    for gw in &t.gateways {
        let r = replica(&t, gw, &dir);
        let listen: SocketAddr = r.settings.server.listen.parse().unwrap();
        assert!(
            listen.ip().is_unspecified(),
            "{gw} listens on {listen}: the load balancer cannot reach it"
        );
        let health = &t.service(gw)["healthcheck"];
        let test = words(&health["test"]).unwrap();
        assert_eq!(test[0], "CMD", "{gw}: the exec form, no shell: {test:?}");
        let probe = &test[1..];
        assert_eq!(probe[0], binary, "{gw}: {probe:?}");
        assert_eq!(probe[1], "healthcheck", "{gw}: {probe:?}");
        match (flag(probe, "--url"), flag(probe, "--config")) {
            (Some(url), None) => {
                let url = url::Url::parse(url).unwrap();
                assert_eq!(
                    url.port(),
                    Some(listen.port()),
                    "{gw}: {url} vs server.listen {listen}"
                );
                assert!(
                    matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")),
                    "{gw}: {url}"
                );
                assert_eq!(url.path(), "/readyz", "{gw}: ready means Redis answers too");
            }
            (None, Some(config)) => assert_eq!(Some(config), flag(&r.args, "--config")),
            other => panic!("{gw}: the probe names its target by --url or --config: {other:?}"),
        }
        let probe_ms: u64 = flag(probe, "--timeout-ms")
            .unwrap_or("2000")
            .parse()
            .unwrap();
        let docker_ms = health["timeout"]
            .as_str()
            .map_or(30_000, compose_duration_ms);
        assert!(
            probe_ms < docker_ms,
            "{gw}: {probe_ms} ms vs {docker_ms} ms"
        );
    }
}

/// nginx directives, each with the blocks it is in: (`["http", "upstream vidu_gateway"]`, `["server", "a:8080"]`).
fn nginx_directives(conf: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let code: String = conf
        .lines()
        .map(|l| l.split('#').next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let (mut out, mut blocks, mut current) = (Vec::new(), Vec::new(), Vec::<String>::new());
    let spaced = code
        .replace('{', " { ")
        .replace('}', " } ")
        .replace(';', " ; ");
    for token in spaced.split_whitespace() {
        match token {
            "{" => blocks.push(std::mem::take(&mut current).join(" ")),
            "}" => {
                assert!(current.is_empty(), "a directive without `;`: {current:?}");
                blocks.pop().expect("an unbalanced `}`");
            }
            ";" => out.push((blocks.clone(), std::mem::take(&mut current))),
            word => current.push(word.trim_matches('"').to_owned()),
        }
    }
    assert!(blocks.is_empty(), "an unclosed block: {blocks:?}");
    out
}

/// An nginx size (`21m`, `512k`, bytes without a unit).
fn nginx_size(s: &str) -> u64 {
    let (n, mult) = match s.to_ascii_lowercase().chars().last() {
        Some('k') => (&s[..s.len() - 1], 1 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    n.parse::<u64>().unwrap() * mult
}

/// An nginx time (`60s`, `1m`, `500ms`; seconds without a unit), in milliseconds.
fn nginx_time_ms(s: &str) -> u64 {
    if s.chars().all(|c| c.is_ascii_digit()) {
        return s.parse::<u64>().unwrap() * 1000;
    }
    compose_duration_ms(s)
}

#[test]
fn the_compose_load_balancer_spreads_over_every_replica_on_its_listen_port() {
    let t = Topology::read();
    let dir = tempfile::tempdir().unwrap();
    let lb = t.service(&t.lb);
    assert!(
        text(&lb["image"]).starts_with("nginx"),
        "this test reads nginx's configuration"
    );
    let (source, _) = mounts(lb)
        .into_iter()
        .find(|(_, target)| {
            target == "/etc/nginx/nginx.conf" || target.starts_with("/etc/nginx/conf.d/")
        })
        .expect("the load balancer's configuration is mounted from deploy/");
    let conf = std::fs::read_to_string(compose_path(&source)).unwrap();
    let directives = nginx_directives(&conf);
    let all = |name: &str| -> Vec<&Vec<String>> {
        directives
            .iter()
            .filter(|(_, d)| d[0] == name)
            .map(|(_, d)| d)
            .collect()
    };
    let one = |name: &str| -> String {
        let found = all(name);
        assert_eq!(found.len(), 1, "one `{name}`: {found:?}");
        found[0][1..].join(" ")
    };

    // Requests go to the upstream group, round-robin, which holds every replica on its listen port.
    let proxy_pass = one("proxy_pass");
    let group = proxy_pass
        .strip_prefix("http://")
        .expect("proxy_pass http://<upstream>");
    let block = format!("upstream {group}");
    let in_group: Vec<&Vec<String>> = directives
        .iter()
        .filter(|(blocks, _)| blocks.last() == Some(&block))
        .map(|(_, d)| d)
        .collect();
    for balancing in ["ip_hash", "hash", "least_conn", "random", "sticky"] {
        assert!(
            in_group.iter().all(|d| d[0] != balancing),
            "{block}: round-robin, not {balancing}"
        );
    }
    let servers: Vec<&Vec<String>> = in_group
        .iter()
        .filter(|d| d[0] == "server")
        .copied()
        .collect();
    let mut settings = None;
    for gw in &t.gateways {
        let r = replica(&t, gw, &dir);
        let port = r
            .settings
            .server
            .listen
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        let server = servers
            .iter()
            .find(|d| d[1] == format!("{gw}:{port}"))
            .unwrap_or_else(|| panic!("{block} has no `server {gw}:{port}`: {servers:?}"));
        assert!(
            !server.iter().any(|w| w == "backup" || w == "down"),
            "{gw} takes its share: {server:?}"
        );
        settings = Some(r.settings);
    }
    let settings = settings.unwrap();

    // Bodies of the gateway's size pass, streamed; the proxy waits longer than the gateway waits for Vidu; a
    // request that reached a replica is never resent to another.
    let max_body = nginx_size(&one("client_max_body_size"));
    assert!(
        max_body >= settings.server.max_body_bytes as u64 && max_body >= 20_000_000,
        "client_max_body_size {max_body} < server.max_body_bytes {}",
        settings.server.max_body_bytes
    );
    assert_eq!(one("proxy_request_buffering"), "off");
    for timeout in ["proxy_read_timeout", "proxy_send_timeout"] {
        let ms = nginx_time_ms(&one(timeout));
        assert!(
            ms > settings.upstream.request_timeout_ms,
            "{timeout} {ms} ms <= upstream.request_timeout_ms {}",
            settings.upstream.request_timeout_ms
        );
    }
    for next in all("proxy_next_upstream") {
        assert!(
            !next.iter().any(|w| w == "non_idempotent"),
            "a create would be sent twice: {next:?}"
        );
    }

    // The published port is the one nginx listens on.
    let listen = one("listen");
    let published: Vec<String> = lb["ports"]
        .as_array()
        .expect("the load balancer publishes a port")
        .iter()
        .map(|p| match p {
            Value::String(s) => {
                let target = s.rsplit(':').next().unwrap();
                target.split('/').next().unwrap().to_owned()
            }
            long => long["target"].to_string(),
        })
        .collect();
    assert!(
        published.contains(&listen),
        "nginx listens on {listen}, compose publishes {published:?}"
    );
}
