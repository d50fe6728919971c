//! `deploy/grafana/vidu-gateway.json` and `deploy/prometheus/alerts.yaml` against the metrics the gateway exports:
//! every metric a PromQL expression names is a series a running gateway's `/metrics` has, every label it matches,
//! groups by or prints is one that series carries; the dashboard's structure (titled panels with queries on the
//! data-source variable, the team filter) and every alert's duration, severity and instructions.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde_json::Value;
use yaml_rust2::YamlLoader;

use crate::deploy::{ROOT, compose_duration_ms, text, yaml_to_json};
use crate::helpers::*;

/// Labels Prometheus adds to every scraped series (the target's), which queries may use.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// A label matcher: (label, operator, value).
type Matcher = (String, String, String);

/// What PromQL names: metric selectors with their label matchers, and the labels of `by`, `without`, `on`,
/// `ignoring`, `group_left` and `group_right`.
#[derive(Debug, Default)]
struct Query {
    /// (metric, its matchers)
    selectors: Vec<(String, Vec<Matcher>)>,
    grouping: Vec<String>,
}

const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const OPERATORS: [&str; 7] = ["and", "or", "unless", "bool", "offset", "inf", "nan"];

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index just past the string literal that starts at `i`.
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        j += if chars[j] == '\\' && quote != '`' {
            2
        } else {
            1
        };
    }
    j + 1
}

fn skip_space(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// The index of the first `close` at or after `i`, outside string literals.
fn find(chars: &[char], mut i: usize, close: char) -> usize {
    while i < chars.len() && chars[i] != close {
        i = if matches!(chars[i], '"' | '\'' | '`') {
            skip_string(chars, i)
        } else {
            i + 1
        };
    }
    assert!(i < chars.len(), "unclosed `{close}`");
    i
}

/// Reads the metric names, label matchers and grouping labels of a PromQL expression (Grafana's `$variables`
/// allowed). Not a PromQL parser: enough of its lexical structure to tell those apart.
fn promql(expr: &str) -> Query {
    let chars: Vec<char> = expr.chars().collect();
    let mut q = Query::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '[' {
            i = find(&chars, i, ']') + 1; // a range or subquery: durations only
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = find(&chars, i, '}') + 1;
            }
            while i < chars.len() && is_name(chars[i]) {
                i += 1;
            }
        } else if c == '{' {
            panic!("a selector without a metric name in {expr}");
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1; // a number or a duration (`5m`, `1e3`)
            }
        } else if is_name(c) {
            let start = i;
            while i < chars.len() && is_name(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_space(&chars, i);
            if GROUPING.contains(&word.as_str()) {
                if chars.get(next) == Some(&'(') {
                    let end = find(&chars, next, ')');
                    let list: String = chars[next + 1..end].iter().collect();
                    q.grouping.extend(
                        list.split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(str::to_owned),
                    );
                    i = end + 1;
                }
            } else if OPERATORS.contains(&word.to_ascii_lowercase().as_str())
                || AGGREGATIONS.contains(&word.as_str())
                || chars.get(next) == Some(&'(')
            {
                // an operator, an aggregation or a function
            } else {
                let mut matchers = Vec::new();
                if chars.get(next) == Some(&'{') {
                    let end = find(&chars, next, '}');
                    matchers = label_matchers(&chars[next + 1..end], expr);
                    i = end + 1;
                }
                q.selectors.push((word, matchers));
            }
        } else {
            i += 1;
        }
    }
    q
}

/// `label op "value", ...` inside a selector's braces.
fn label_matchers(chars: &[char], expr: &str) -> Vec<Matcher> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        if i == chars.len() {
            return out;
        }
        let start = i;
        while i < chars.len() && is_name(chars[i]) {
            i += 1;
        }
        let label: String = chars[start..i].iter().collect();
        i = skip_space(chars, i);
        let op_start = i;
        while i < chars.len() && matches!(chars[i], '=' | '!' | '~') {
            i += 1;
        }
        let op: String = chars[op_start..i].iter().collect();
        i = skip_space(chars, i);
        assert!(
            !label.is_empty()
                && ["=", "!=", "=~", "!~"].contains(&op.as_str())
                && matches!(chars.get(i), Some('"' | '\'' | '`')),
            "a label matcher `label op \"value\"` in {expr}"
        );
        let end = skip_string(chars, i);
        let value: String = chars[i + 1..end - 1].iter().collect();
        out.push((label, op, value));
        i = end;
    }
}

#[test]
fn the_promql_reader_tells_metrics_matchers_and_grouping_labels_apart() {
    let q = promql(
        r#"sum by (team, le) (rate(a_total{outcome="x,}",team=~"$team"}[$__rate_interval] offset 1h)) * 3600
            > bool 0.5 unless on(instance) group_left histogram_quantile(0.9, b_bucket{ x != 'y' }) or c"#,
    );
    let metrics: Vec<&str> = q.selectors.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(metrics, ["a_total", "b_bucket", "c"]);
    let labels: Vec<&str> = q.selectors[0]
        .1
        .iter()
        .map(|(l, _, _)| l.as_str())
        .collect();
    assert_eq!(labels, ["outcome", "team"]);
    assert_eq!(q.selectors[0].1[1].2, "$team");
    assert_eq!(q.selectors[1].1[0], ("x".into(), "!=".into(), "y".into()));
    assert_eq!(q.grouping, ["team", "le", "instance"]);
}

/// The sample names of a `/metrics` exposition, each with its family, from its `# TYPE` lines (counters are
/// exported as `<family>_total`, histograms as `_bucket`, `_sum`, `_count`). prometheus-client leaves a labelled
/// family out until it has a sample: see `populated()`.
fn exported_series(exposition: &str) -> HashMap<String, String> {
    let mut series = HashMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (family, kind) = rest.split_once(' ').unwrap();
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "gauge" | "unknown" => &[""],
            other => panic!("a family of kind {other}: {family}"),
        };
        for suffix in suffixes {
            series.insert(format!("{family}{suffix}"), family.to_owned());
        }
    }
    assert!(!series.is_empty(), "no `# TYPE` line in the exposition");
    series
}

/// The exposition of the gateway's metrics with a sample in every labelled family (an empty family is not
/// rendered at all), so that every family and the names of its labels show.
fn populated() -> String {
    use vidu_gateway::metrics::*;
    let m = Metrics::new();
    let team = || "t".to_owned();
    m.http_requests
        .get_or_create(&HttpLabels {
            route: "/r".into(),
            method: "GET".into(),
            status: 200,
        })
        .inc();
    m.http_duration
        .get_or_create(&RouteLabels { route: "/r".into() })
        .observe(0.1);
    m.upstream_requests
        .get_or_create(&UpstreamLabels {
            endpoint: "e",
            outcome: "2xx",
        })
        .inc();
    m.upstream_duration
        .get_or_create(&EndpointLabels { endpoint: "e" })
        .observe(0.1);
    m.upstream_secret_scrubbed
        .get_or_create(&EndpointLabels { endpoint: "e" })
        .inc();
    m.auth_failures
        .get_or_create(&ReasonLabels { reason: "r" })
        .inc();
    for family in [
        &m.config_reloads,
        &m.jwks_fetches,
        &m.lifecycle.callbacks,
        &m.lifecycle.reconcile_queries,
        &m.lifecycle.relays,
        &m.lifecycle.reservations_resolved,
        &m.balance.polls,
    ] {
        family.get_or_create(&OutcomeLabels { outcome: "o" }).inc();
    }
    m.admissions
        .get_or_create(&AdmissionLabels {
            outcome: "o",
            reason: "r",
            team: team(),
        })
        .inc();
    m.credits
        .get_or_create(&CreditLabels {
            kind: "k",
            team: team(),
        })
        .inc();
    for family in [&m.in_flight, &m.budget_remaining, &m.running_tasks] {
        family.get_or_create(&TeamLabels { team: team() }).set(1);
    }
    m.lifecycle
        .tasks_ended
        .get_or_create(&TaskLabels {
            state: "s",
            team: team(),
        })
        .inc();
    m.render()
}

/// The label names of every series, from `populated()`.
fn series_labels() -> HashMap<String, BTreeSet<String>> {
    let mut labels: HashMap<String, BTreeSet<String>> = HashMap::new();
    for line in populated().lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap();
        let names = labels.entry(line[..name_end].to_owned()).or_default();
        if let Some(inside) = line[name_end..]
            .strip_prefix('{')
            .and_then(|r| r.split_once('}'))
        {
            names.extend(
                inside
                    .0
                    .split(',')
                    .map(|pair| pair.split_once('=').unwrap().0.to_owned()),
            );
        }
    }
    labels
}

fn grafana() -> Value {
    let path = Path::new(ROOT).join("deploy/grafana/vidu-gateway.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .expect("deploy/grafana/vidu-gateway.json is JSON")
}

fn alert_rules() -> Vec<Value> {
    let path = Path::new(ROOT).join("deploy/prometheus/alerts.yaml");
    let docs = YamlLoader::load_from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("deploy/prometheus/alerts.yaml is not valid YAML: {e}"));
    assert_eq!(docs.len(), 1, "one YAML document");
    let doc = yaml_to_json(&docs[0]);
    let groups = doc["groups"].as_array().expect("a rules file: `groups:`");
    assert!(!groups.is_empty());
    groups
        .iter()
        .flat_map(|g| {
            assert!(g["name"].is_string(), "a group has a name: {g}");
            g["rules"].as_array().expect("a group has `rules:`").clone()
        })
        .collect()
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("`panels`") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// (where, PromQL, labels it prints: legend `{{label}}` or annotation `$labels.label`) of the dashboard and the
/// alerts. Template-variable queries (`label_values(metric, label)`) come as `metric{label=""}`.
fn expressions() -> Vec<(String, String, Vec<String>)> {
    let placeholders = |s: &str, open: &str, close: &[char]| -> Vec<String> {
        s.split(open)
            .skip(1)
            .map(|rest| rest.split(close).next().unwrap().trim().to_owned())
            .collect()
    };
    let mut out = Vec::new();
    let dashboard = grafana();
    for p in panels(&dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let legend = t["legendFormat"].as_str().unwrap_or("");
            out.push((
                format!("panel {:?} {}", text(&p["title"]), text(&t["refId"])),
                text(&t["expr"]).to_owned(),
                placeholders(legend, "{{", &['}']),
            ));
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let query = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        let args = query
            .strip_prefix("label_values(")
            .and_then(|a| a.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: label_values(metric, label)", v["name"]));
        let (metric, label) = args.split_once(',').expect("label_values(metric, label)");
        out.push((
            format!("variable {}", v["name"]),
            format!("{}{{{}=\"\"}}", metric.trim(), label.trim()),
            Vec::new(),
        ));
    }
    for rule in alert_rules() {
        let notes: String = rule["annotations"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, v)| v.as_str().unwrap_or(""))
            .collect();
        out.push((
            format!("alert {}", rule["alert"]),
            text(&rule["expr"]).to_owned(),
            placeholders(&notes, "$labels.", &[' ', '}']),
        ));
    }
    out
}

#[actix_web::test]
async fn every_metric_and_label_the_dashboard_and_the_alerts_query_is_one_the_gateway_exports() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    // What a running gateway serves, and the families that only show once they have a sample.
    let mut exported = exported_series(&app.metrics_text().await);
    exported.extend(exported_series(&populated()));
    let labels = series_labels();
    for (place, expr, printed) in expressions() {
        let q = promql(&expr);
        assert!(!q.selectors.is_empty(), "{place}: no metric in {expr}");
        let mut known: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        for (metric, matchers) in &q.selectors {
            assert!(
                exported.contains_key(metric),
                "{place}: {metric} is not exported by the gateway (families: vidu_gateway_*, counters as \
                 _total, histograms as _bucket/_sum/_count; a labelled family needs a sample in populated()): \
                 {expr}"
            );
            let own = labels.get(metric).unwrap_or_else(|| {
                panic!("{place}: give the family of {metric} a sample in populated()")
            });
            for (label, _, _) in matchers {
                assert!(
                    own.contains(label) || TARGET_LABELS.contains(&label.as_str()),
                    "{place}: {metric} has no label {label} (it has {own:?})"
                );
            }
            known.extend(own.iter().cloned());
        }
        for label in q.grouping.iter().chain(&printed) {
            assert!(
                known.contains(label),
                "{place}: no series of {expr} has the label {label} ({known:?})"
            );
        }
    }
}

#[test]
fn the_dashboard_has_titled_panels_querying_the_datasource_variable_filtered_by_team() {
    let d = grafana();
    assert!(!text(&d["title"]).is_empty() && !text(&d["uid"]).is_empty());
    let variables = d["templating"]["list"].as_array().expect("templating");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    let source = variable("datasource");
    assert_eq!(source["type"], "datasource");
    assert_eq!(source["query"], "prometheus");
    let uses_variable = |ds: &Value| {
        ds["type"] == "prometheus"
            && matches!(ds["uid"].as_str(), Some("${datasource}" | "$datasource"))
    };
    let team = variable("team");
    assert_eq!(team["type"], "query");
    assert!(uses_variable(&team["datasource"]), "{team}");
    assert_eq!(team["includeAll"], true, "All teams is a choice");

    let labels = series_labels();
    let mut ids = BTreeSet::new();
    let mut queried = BTreeSet::new();
    for p in panels(&d) {
        let title = text(&p["title"]);
        assert!(!title.is_empty(), "a panel without a title: {}", p["id"]);
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel id {} twice",
            p["id"]
        );
        let pos = &p["gridPos"];
        let (x, w) = (pos["x"].as_u64().unwrap(), pos["w"].as_u64().unwrap());
        assert!(
            w > 0 && x + w <= 24 && pos["h"].as_u64().unwrap() > 0,
            "{title}: {pos}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert!(
            uses_variable(&p["datasource"]),
            "{title}: datasource {}",
            p["datasource"]
        );
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(refs.insert(text(&t["refId"])), "{title}: refId twice");
            if let Some(ds) = t.get("datasource") {
                assert!(uses_variable(ds), "{title}: target datasource {ds}");
            }
            let expr = text(&t["expr"]);
            // A series with a team label follows the team variable.
            for (metric, matchers) in promql(expr).selectors {
                if labels.get(&metric).is_some_and(|l| l.contains("team")) {
                    assert!(
                        matchers
                            .iter()
                            .any(|m| *m == ("team".into(), "=~".into(), "$team".into())),
                        "{title}: {metric} without team=~\"$team\": {expr}"
                    );
                }
                queried.insert(metric);
            }
        }
    }
    // What the dashboard is for.
    let wanted = [
        "admissions_total",
        "credits_total",
        "budget_remaining_credits",
        "running_tasks",
        "running_tasks_global",
        "upstream_duration_seconds_bucket",
        "upstream_requests_total",
        "vidu_credits_remaining",
        "vidu_credits_runway_hours",
        "state_spool_depth",
        "ready",
        "config_replicas_disagree",
    ];
    assert_covers(&queried, &wanted, "no panel shows");
}

/// Each of `wanted` (without the `vidu_gateway_` prefix) is among the `queried` series.
fn assert_covers(queried: &BTreeSet<String>, wanted: &[&str], missing: &str) {
    for metric in wanted {
        let metric = format!("vidu_gateway_{metric}");
        assert!(queried.contains(&metric), "{missing} {metric}");
    }
}

#[test]
fn every_alert_has_an_expression_a_duration_a_severity_and_what_to_do() {
    let rules = alert_rules();
    let mut names = BTreeSet::new();
    let mut queried = BTreeSet::new();
    for rule in &rules {
        let name = text(&rule["alert"]);
        assert!(names.insert(name), "alert {name} twice");
        assert!(
            name.starts_with("ViduGateway") && !name.contains(char::is_whitespace),
            "{name}"
        );
        let expr = text(&rule["expr"]);
        assert!(!expr.trim().is_empty(), "{name}: expr");
        let duration = text(&rule["for"]);
        assert!(
            compose_duration_ms(duration) <= 3_600_000,
            "{name}: for {duration}"
        );
        assert!(
            ["critical", "warning", "info"].contains(&text(&rule["labels"]["severity"])),
            "{name}: labels.severity"
        );
        for note in ["summary", "description"] {
            let t = text(&rule["annotations"][note]);
            assert!(
                t.trim().len() > 20,
                "{name}: annotations.{note} tells ops what happens: {t:?}"
            );
        }
        queried.extend(promql(expr).selectors.into_iter().map(|(m, _)| m));
    }
    // What ops must be paged or warned about.
    let wanted = [
        "budget_remaining_credits",
        "vidu_credits_runway_hours",
        "upstream_requests_total",
        "ready",
        "admissions_unaccounted_total",
        "state_spool_depth",
        "state_data_lost_total",
        "config_replicas_disagree",
        "jwks_fetches_total",
        "upstream_secret_scrubbed_total",
    ];
    assert_covers(&queried, &wanted, "no alert watches");
}
