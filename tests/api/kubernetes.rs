//! `deploy/kubernetes/` read with a real YAML parser: the ConfigMap's configuration loaded by the gateway's own
//! loader as the Deployment runs it (the image's ENV, the container's env, the mounted Secrets at the `*_file`
//! paths), and the Deployment, Service, PodDisruptionBudget, the documented Secrets and the Redis example checked
//! against it; the probe and scrape paths against what a running gateway answers.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;
use yaml_rust2::YamlLoader;

use crate::deploy::{
    ROOT, command_flag, env_var, flag, image_args, image_env, secret_files, stand_in_secret, text,
    words, yaml_to_json,
};
use crate::helpers::*;

const MIB: u64 = 1 << 20;

/// `deploy/kubernetes/<sub>`.
fn k8s_dir(sub: &str) -> PathBuf {
    Path::new(ROOT).join("deploy/kubernetes").join(sub)
}

/// The objects of the manifests `dir/kustomization.yaml` lists, in order, and the kustomization itself.
struct Kustomization {
    doc: Value,
    objects: Vec<Value>,
}

impl Kustomization {
    fn read(dir: &Path) -> Self {
        let doc = yaml_file(&dir.join("kustomization.yaml")).remove(0);
        assert_eq!(doc["kind"], "Kustomization", "{}", dir.display());
        let resources: Vec<&str> = doc["resources"]
            .as_array()
            .expect("kustomization.yaml lists its `resources:`")
            .iter()
            .map(text)
            .collect();
        // Every manifest in the directory is listed (and only those): `kubectl apply -k` applies all of it.
        let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| (n.ends_with(".yaml") || n.ends_with(".yml")) && n != "kustomization.yaml")
            .collect();
        let listed: BTreeSet<String> = resources
            .iter()
            .filter(|r| !r.ends_with('/'))
            .map(|r| r.to_string())
            .collect();
        let shown = dir.strip_prefix(ROOT).unwrap_or(dir).display();
        assert_eq!(
            listed, on_disk,
            "{shown}/kustomization.yaml lists other files than the manifests beside it"
        );
        let objects: Vec<Value> = resources
            .iter()
            .flat_map(|r| yaml_file(&dir.join(r)))
            .collect();
        for o in &objects {
            assert!(o["apiVersion"].is_string() && o["kind"].is_string(), "{o}");
            assert!(o["metadata"]["name"].is_string(), "a name: {o}");
            assert_ne!(
                o["kind"], "Secret",
                "no Secret is committed, not even with placeholders: create them (kustomization.yaml)"
            );
        }
        let mut names = BTreeSet::new();
        for o in &objects {
            let id = format!("{}/{}", text(&o["kind"]), text(&o["metadata"]["name"]));
            assert!(names.insert(id.clone()), "{id} twice");
        }
        Self { doc, objects }
    }

    /// The one object of `kind`.
    fn one(&self, kind: &str) -> &Value {
        let found: Vec<&Value> = self.objects.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "one {kind}");
        found[0]
    }
}

/// Every document of a YAML file, as JSON (empty documents dropped).
fn yaml_file(path: &Path) -> Vec<Value> {
    let source = std::fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&source)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        .iter()
        .map(yaml_to_json)
        .filter(|d| !d.is_null())
        .collect()
}

/// `matchLabels` select an object with `labels` (matchExpressions are not used here).
fn selects(selector: &Value, labels: &Value) -> bool {
    assert!(
        selector.get("matchExpressions").is_none(),
        "matchLabels only: {selector}"
    );
    let wanted = selector
        .get("matchLabels")
        .unwrap_or(selector)
        .as_object()
        .unwrap_or_else(|| panic!("a label selector: {selector}"));
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A container port given by number or by name.
fn port_of(container: &Value, port: &Value) -> u16 {
    match port {
        Value::Number(n) => n.as_u64().unwrap() as u16,
        Value::String(name) => container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == *name)
            .map(|p| p["containerPort"].as_u64().unwrap() as u16)
            .unwrap_or_else(|| panic!("no container port named {name}")),
        other => panic!("a port: {other}"),
    }
}

/// A Kubernetes quantity (`640Mi`, `1Gi`, `250m`, `1`) in bytes or cores.
fn quantity(v: &Value) -> f64 {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let units = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("m", 0.001),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
    ];
    for (suffix, mult) in units {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<f64>().unwrap() * mult;
        }
    }
    s.parse().unwrap_or_else(|_| panic!("a quantity: {s}"))
}

/// The gateway as the Deployment runs it.
struct Gateway {
    k: Kustomization,
    settings: vidu_gateway::config::Settings,
    /// `*_file` key (`state.redis_password_file`) → (Secret, key in it) mounted at its path.
    secret_of_key: HashMap<String, (String, String)>,
}

impl Gateway {
    fn deployment(&self) -> &Value {
        self.k.one("Deployment")
    }

    fn pod(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "one container: the gateway");
        &containers[0]
    }

    fn pod_labels(&self) -> &Value {
        &self.deployment()["spec"]["template"]["metadata"]["labels"]
    }

    fn volume(&self, name: &str) -> &Value {
        self.pod()["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    /// The volume mount whose directory holds `path`, and `path` inside it.
    fn mount_of(&self, path: &Path) -> Option<(&Value, PathBuf)> {
        self.container()["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| {
                let rel = path.strip_prefix(text(&m["mountPath"])).ok()?;
                Some((m, rel.to_owned()))
            })
            .max_by_key(|(m, _)| text(&m["mountPath"]).len())
    }

    fn port(&self, addr: &str) -> u16 {
        addr.parse::<SocketAddr>().unwrap().port()
    }

    fn read(dir: &tempfile::TempDir) -> Self {
        let k = Kustomization::read(&k8s_dir(""));
        let container = k.one("Deployment")["spec"]["template"]["spec"]["containers"][0].clone();
        let args = image_args(words(&container["command"]), words(&container["args"]));
        assert_eq!(args.get(1).map(String::as_str), Some("serve"), "{args:?}");
        let config_path = PathBuf::from(flag(&args, "--config").expect("serve --config <file>"));
        let mut g = Self {
            k,
            settings: Default::default(),
            secret_of_key: HashMap::new(),
        };

        // The configuration: a ConfigMap mounted as a directory (a subPath mount never sees an update).
        let (mount, file) = g
            .mount_of(&config_path)
            .unwrap_or_else(|| panic!("nothing is mounted where {} is", config_path.display()));
        assert!(
            mount.get("subPath").is_none(),
            "the ConfigMap is mounted as a directory, so its updates reach the file (live reload)"
        );
        let map_name = text(&g.volume(text(&mount["name"]))["configMap"]["name"]).to_owned();
        let map =
            g.k.objects
                .iter()
                .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == map_name.as_str())
                .unwrap_or_else(|| panic!("the ConfigMap {map_name} is not in the kustomization"));
        let toml_text = text(&map["data"][file.to_str().unwrap()]).to_owned();
        let config_file = dir.path().join("gateway.toml");
        std::fs::write(&config_file, &toml_text).unwrap();

        // The environment the process sees: the image's ENV, then the container's (values only: no secret in it).
        let mut env = image_env();
        for e in container["env"].as_array().into_iter().flatten() {
            let value = e["value"].as_str().unwrap_or_else(|| {
                panic!("{e}: configuration by value; secrets reach the gateway as *_file")
            });
            env.insert(text(&e["name"]).to_owned(), value.to_owned());
        }
        env.retain(|k, _| k.starts_with("VIDU_GW__"));

        // Every `*_file` it reads is a key of a Secret mounted at exactly that path.
        for (key, path) in secret_files(&toml_text, &env, "the Deployment") {
            let (mount, item) = g
                .mount_of(Path::new(&path))
                .unwrap_or_else(|| panic!("{key} = {path}: no volume is mounted there"));
            let source = secret_source(g.volume(text(&mount["name"])), item.to_str().unwrap())
                .unwrap_or_else(|| panic!("{key} = {path} is no key of a mounted Secret"));
            let stand_in = stand_in_secret(dir, &format!("{}-{}", source.0, source.1), &key);
            env.insert(env_var(&key), stand_in.display().to_string());
            g.secret_of_key.insert(key, source);
        }
        g.settings = vidu_gateway::config::load_with_env(Some(&config_file), env)
            .unwrap_or_else(|e| {
                panic!("the ConfigMap's gateway.toml as the Deployment runs it is invalid: {e}")
            })
            .settings;
        g
    }
}

/// The (Secret, key) a `secret` or `projected` volume puts at `file` (relative to its mount).
fn secret_source(volume: &Value, file: &str) -> Option<(String, String)> {
    let from = |secret: &Value, name_key: &str| -> Option<(String, String)> {
        let name = secret[name_key].as_str()?.to_owned();
        match secret["items"].as_array() {
            Some(items) => items
                .iter()
                .find(|i| i["path"] == file)
                .map(|i| (name.clone(), text(&i["key"]).to_owned())),
            None => Some((name, file.to_owned())),
        }
    };
    if volume.get("secret").is_some() {
        return from(&volume["secret"], "secretName");
    }
    volume["projected"]["sources"]
        .as_array()?
        .iter()
        .filter(|s| s.get("secret").is_some())
        .find_map(|s| from(&s["secret"], "name"))
}

#[test]
fn every_kubernetes_manifest_parses_and_each_kustomization_lists_every_file_beside_it() {
    let main = Kustomization::read(&k8s_dir(""));
    for kind in ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"] {
        main.one(kind);
    }
    // The image the kustomization maps is the container's.
    let image = text(&main.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]);
    let mapped: Vec<&str> = main.doc["images"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| text(&i["name"]))
        .collect();
    assert!(
        mapped.contains(&image),
        "kustomization.yaml `images:` maps {mapped:?}, the container runs {image}"
    );
    let redis = Kustomization::read(&k8s_dir("redis-example"));
    redis.one("StatefulSet");
    redis.one("Service");
}

#[test]
fn the_configmaps_configuration_is_valid_as_the_deployment_runs_it_on_the_redis_backend() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::read(&dir);
    let s = &g.settings;
    assert_eq!(s.state.backend, vidu_gateway::config::StateBackend::Redis);
    assert_eq!(s.upstream.mode, vidu_gateway::config::UpstreamMode::Vidu);
    assert!(
        g.secret_of_key.contains_key("upstream.api_key_file") && s.upstream.api_key.is_set(),
        "the Vidu key from a mounted Secret"
    );
    assert!(
        g.secret_of_key.contains_key("state.redis_password_file")
            && s.state.redis_password.is_set(),
        "the Redis password from a mounted Secret"
    );
    let url = url::Url::parse(s.state.redis_url.expose()).unwrap();
    assert!(url.password().is_none(), "no password in state.redis_url");
    for addr in [Some(&s.server.listen), s.server.metrics_listen.as_ref()]
        .into_iter()
        .flatten()
    {
        let addr: SocketAddr = addr.parse().unwrap();
        assert!(
            addr.ip().is_unspecified(),
            "{addr}: the kubelet and the Service reach the pod's IP, not its loopback"
        );
    }
}

#[test]
fn the_deployment_runs_two_spread_non_root_replicas_whose_probes_ports_and_grace_follow_the_config()
{
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::read(&dir);
    let s = &g.settings;
    let spec = &g.deployment()["spec"];
    let (pod, container) = (g.pod(), g.container());
    assert!(
        spec["replicas"].as_u64().unwrap() >= 2,
        "two replicas at least"
    );
    assert!(
        selects(&spec["selector"], g.pod_labels()),
        "the Deployment selects its pods"
    );

    // Ports: the API and /metrics where the configuration listens.
    let listen = g.port(&s.server.listen);
    let declared: Vec<u16> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| port_of(container, &p["containerPort"]))
        .collect();
    assert!(
        declared.contains(&listen),
        "{declared:?} vs server.listen {listen}"
    );
    let metrics = s
        .server
        .metrics_listen
        .as_deref()
        .map_or(listen, |m| g.port(m));
    assert!(
        declared.contains(&metrics),
        "{declared:?} vs server.metrics_listen {metrics}"
    );

    // Probes: ready is /readyz (Redis answers), alive is /healthz (never Redis: an outage must not restart
    // every pod), both on the API's port.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(port_of(container, &get["port"]), listen, "{probe} port");
    }
    if let Some(get) = container.get("startupProbe").map(|p| &p["httpGet"]) {
        assert_eq!(get["path"], "/healthz", "startupProbe");
        assert_eq!(
            port_of(container, &get["port"]),
            listen,
            "startupProbe port"
        );
    }

    // Scraped where /metrics is served.
    let notes = &spec["template"]["metadata"]["annotations"];
    assert_eq!(notes["prometheus.io/scrape"], "true");
    assert_eq!(
        notes["prometheus.io/port"],
        metrics.to_string(),
        "prometheus.io/port: /metrics is served on {metrics}"
    );
    assert_eq!(notes["prometheus.io/path"], "/metrics");

    // Shutdown: the preStop pause, then in-flight requests get server.shutdown_timeout_secs, within the grace.
    let pause = match &container["lifecycle"]["preStop"] {
        Value::Null => 0,
        pre if pre.get("sleep").is_some() => pre["sleep"]["seconds"].as_u64().unwrap(),
        pre => {
            let cmd = words(&pre["exec"]["command"]).unwrap();
            assert!(cmd[0].ends_with("sleep"), "{cmd:?}");
            cmd[1].parse().unwrap()
        }
    };
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    assert!(
        grace > pause + s.server.shutdown_timeout_secs,
        "terminationGracePeriodSeconds {grace} <= preStop {pause} s + server.shutdown_timeout_secs {}",
        s.server.shutdown_timeout_secs
    );

    // Spread over nodes.
    let spread = pod["topologySpreadConstraints"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| {
            c["topologyKey"] == "kubernetes.io/hostname"
                && selects(&c["labelSelector"], g.pod_labels())
        });
    let anti = pod["affinity"]["podAntiAffinity"]
        .as_object()
        .into_iter()
        .flat_map(|a| a.values())
        .flat_map(|terms| terms.as_array().cloned().unwrap_or_default())
        .any(|t| {
            let t = t.get("podAffinityTerm").cloned().unwrap_or(t);
            t["topologyKey"] == "kubernetes.io/hostname"
                && selects(&t["labelSelector"], g.pod_labels())
        });
    assert!(spread || anti, "the replicas are spread over nodes");

    // Non-root, read-only root filesystem; what the gateway writes is on a writable volume.
    let sc = &container["securityContext"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let spool = &s.state.spool_path;
    let (mount, _) = g.mount_of(spool).unwrap_or_else(|| {
        panic!(
            "state.spool_path {} is on the read-only root",
            spool.display()
        )
    });
    assert_ne!(mount["readOnly"], true, "{mount}");
    let volume = g.volume(text(&mount["name"]));
    assert!(
        volume.get("emptyDir").is_some() || volume.get("persistentVolumeClaim").is_some(),
        "{volume}"
    );

    // Requests and limits; the memory limit holds the bodies the gateway may buffer (README "Performance":
    // RSS ~ 24 MiB + 1.6 x bytes of bodies in flight), so its own 503 comes before the OOM killer.
    let resources = &container["resources"];
    for part in ["requests", "limits"] {
        for what in ["cpu", "memory"] {
            assert!(
                quantity(&resources[part][what]) > 0.0,
                "resources.{part}.{what}"
            );
        }
    }
    let memory = quantity(&resources["limits"]["memory"]);
    let needed = 24.0 * MIB as f64 + 1.6 * s.server.max_buffered_body_bytes as f64;
    assert!(
        memory >= needed,
        "memory limit {} MiB < 24 MiB + 1.6 x server.max_buffered_body_bytes = {} MiB",
        memory / MIB as f64,
        needed / MIB as f64
    );
    assert!(quantity(&resources["requests"]["memory"]) <= memory);
    assert!(quantity(&resources["requests"]["cpu"]) <= quantity(&resources["limits"]["cpu"]));
}

#[test]
fn the_service_and_the_disruption_budget_select_the_gateways_pods_and_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::read(&dir);
    let container = g.container();
    let service = &g.k.one("Service")["spec"];
    assert!(
        selects(&service["selector"], g.pod_labels()),
        "the Service selects the gateway's pods"
    );
    let listen = g.port(&g.settings.server.listen);
    let targets: Vec<u16> = service["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| port_of(container, p.get("targetPort").unwrap_or(&p["port"])))
        .collect();
    assert!(
        targets.contains(&listen),
        "the Service targets {targets:?}, the API listens on {listen}"
    );

    let pdb = &g.k.one("PodDisruptionBudget")["spec"];
    assert!(
        selects(&pdb["selector"], g.pod_labels()),
        "the PodDisruptionBudget selects the gateway's pods"
    );
    let replicas = g.deployment()["spec"]["replicas"].as_u64().unwrap();
    match (pdb["minAvailable"].as_u64(), pdb["maxUnavailable"].as_u64()) {
        (Some(min), None) => assert!(
            min >= 1 && min < replicas,
            "minAvailable {min} of {replicas}"
        ),
        (None, Some(max)) => assert!(
            max >= 1 && max < replicas,
            "maxUnavailable {max} of {replicas}"
        ),
        other => panic!("minAvailable or maxUnavailable, as a number: {other:?}"),
    }

    // Neither picks up the Redis example's pods.
    let redis = Kustomization::read(&k8s_dir("redis-example"));
    let redis_labels = &redis.one("StatefulSet")["spec"]["template"]["metadata"]["labels"];
    assert!(!selects(&service["selector"], redis_labels));
    assert!(!selects(&pdb["selector"], redis_labels));
}

/// `kubectl create secret generic NAME --from-file=KEY=PATH ...` lines of a text: (Secret, key) pairs.
fn documented_secrets(doc: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for line in doc.lines() {
        let Some((_, rest)) = line.split_once("kubectl create secret generic ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let name = words.next().unwrap().to_owned();
        for w in words {
            if let Some(spec) = w.strip_prefix("--from-file=") {
                let (key, _) = spec.split_once('=').unwrap_or_else(|| {
                    panic!(
                        "--from-file=KEY=PATH, so the key does not depend on a file name: {line}"
                    )
                });
                out.insert((name.clone(), key.to_owned()));
            }
        }
    }
    out
}

#[test]
fn the_documented_kubectl_commands_create_every_secret_key_the_deployment_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::read(&dir);
    let mounted: BTreeSet<(String, String)> = g.secret_of_key.values().cloned().collect();
    for (place, doc) in [
        (
            "deploy/kubernetes/kustomization.yaml",
            k8s_dir("kustomization.yaml"),
        ),
        ("README.md", Path::new(ROOT).join("README.md")),
    ] {
        let created = documented_secrets(&std::fs::read_to_string(doc).unwrap());
        assert_eq!(
            created, mounted,
            "{place}: the Secrets it creates vs the ones the gateway reads"
        );
    }
}

#[test]
fn the_redis_example_keeps_an_aof_on_a_volume_behind_the_url_and_password_the_gateway_uses() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::read(&dir);
    let redis = Kustomization::read(&k8s_dir("redis-example"));
    let set = redis.one("StatefulSet");
    let pod = &set["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let command = words(&container["command"]).unwrap().join(" ");
    for (flag, value) in [
        ("--appendonly", "yes"),
        ("--appendfsync", "everysec"),
        ("--maxmemory-policy", "noeviction"),
    ] {
        let words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
        assert_eq!(
            command_flag(&words, flag).as_deref(),
            Some(value),
            "{command}"
        );
    }
    // The AOF's directory is a claim of the StatefulSet's, not the pod's ephemeral storage.
    let words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
    let data_dir = command_flag(&words, "--dir").unwrap_or_else(|| "/data".into());
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == data_dir.as_str())
        .unwrap_or_else(|| panic!("nothing is mounted at {data_dir}"));
    assert!(
        set["spec"]["volumeClaimTemplates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["metadata"]["name"] == mount["name"]),
        "{data_dir} is on a volumeClaimTemplate"
    );

    // Its Service is the host and port of state.redis_url.
    let url = url::Url::parse(g.settings.state.redis_url.expose()).unwrap();
    let service = redis.one("Service");
    assert_eq!(
        Some(text(&service["metadata"]["name"])),
        url.host_str(),
        "state.redis_url"
    );
    assert!(selects(
        &service["spec"]["selector"],
        &set["spec"]["template"]["metadata"]["labels"]
    ));
    let port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"].as_u64() == Some(u64::from(url.port().unwrap_or(6379))))
        .unwrap_or_else(|| panic!("the Service has no port {:?}", url.port()));
    assert_eq!(port_of(container, &port["targetPort"]), 6379);

    // requirepass comes from the Secret and key the gateway's state.redis_password_file is.
    let wanted = &g.secret_of_key["state.redis_password_file"];
    let (file, _) = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|m| {
            let volume = pod["volumes"]
                .as_array()?
                .iter()
                .find(|v| v["name"] == m["name"])?;
            let items = volume["secret"]["items"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let (path, key) = match items.as_slice() {
                [item] => (
                    text(&item["path"]).to_owned(),
                    text(&item["key"]).to_owned(),
                ),
                _ => return None,
            };
            let source = (text(&volume["secret"]["secretName"]).to_owned(), key);
            (source == *wanted).then(|| (format!("{}/{path}", text(&m["mountPath"])), source))
        })
        .unwrap_or_else(|| panic!("redis mounts no {wanted:?}"));
    assert!(
        command.contains("requirepass") && command.contains(&file),
        "requirepass from {file}: {command}"
    );
}

#[actix_web::test]
async fn the_deployments_probe_and_scrape_paths_are_answered_by_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::read(&dir);
    let container = g.container();
    let annotations = &g.deployment()["spec"]["template"]["metadata"]["annotations"];
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock)
        .server(|s| s.metrics_listen = Some("127.0.0.1:0".into()))
        .spawn()
        .await;
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let Some(path) = container[probe]["httpGet"]["path"].as_str() else {
            continue;
        };
        let (status, _, body) = app.get_open(path).await;
        assert_eq!(status, 200, "{probe} {path}: {body}");
    }
    let scrape = format!(
        "http://127.0.0.1:{}{}",
        app.metrics_port.unwrap(),
        text(&annotations["prometheus.io/path"])
    );
    let mut res = app.client.get(scrape.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 200, "{scrape}");
    let body = res.body().await.unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("vidu_gateway_ready"),
        "{scrape} serves the gateway's metrics"
    );
}
