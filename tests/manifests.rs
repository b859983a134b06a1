//! Offline checks of everything that deploys keel, no cluster or Docker needed:
//!
//! - the Kubernetes manifests (`deploy/kubernetes/`) against the Kubernetes API schemas with
//!   `kubernetes-validate` (scripts/test.sh installs it), strictly (unknown fields fail);
//! - the TOML inside the ConfigMap, and the image's and compose example's configs, through
//!   `keel check`, and the manifests against that TOML (ports, probes, grace periods, names);
//! - the two Dockerfiles end in the same runtime stage;
//! - the Grafana dashboard (`deploy/grafana/keel.json`) and the prometheus-adapter rules use
//!   only metric names and labels that a real keel `/metrics` scrape shows, and their queries
//!   parse as PromQL (`promtool`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use support::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// Writes to the real stderr, past the test harness's capture, so skips show in CI logs.
fn note(message: &str) {
    let _ = writeln!(std::io::stderr(), "manifests: {message}");
}

fn kubernetes_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The top-level `kind:` of a one-document manifest.
fn kind(text: &str) -> &str {
    text.lines()
        .find_map(|l| l.strip_prefix("kind: "))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no kind in:\n{text}"))
}

/// Kinds kubernetes-validate has no schema for, and why that is acceptable.
fn unvalidated_reason(kind: &str) -> Option<&'static str> {
    match kind {
        "Kustomization" => Some(
            "kustomize's own file, not an API object; its rendered output is validated when kubectl is installed",
        ),
        "ServiceMonitor" => Some(
            "a Prometheus Operator CRD without a schema in kubernetes-validate; cross-checked against the Service instead",
        ),
        _ => None,
    }
}

/// The values of every `key: value` line (comments skipped, list dashes and quotes removed).
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}:");
    text.lines()
        .map(|l| l.trim_start().trim_start_matches("- ").trim_start())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().trim_matches('"'))
        .filter(|v| !v.is_empty())
        .collect()
}

/// The content of the block scalar `key: |` (dedented), as YAML defines it.
fn block_scalar(text: &str, key: &str) -> Option<String> {
    let mut lines = text.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    lines.next()?;
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.starts_with("    "))
        .collect();
    let indent = body
        .iter()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())?;
    let mut out = String::new();
    for line in body {
        out.push_str(line.get(indent..).unwrap_or(""));
        out.push('\n');
    }
    Some(out)
}

fn keel_check(path: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "keel check {}:\n{stdout}",
        path.display()
    );
    stdout
}

fn tool_works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs kubernetes-validate strictly on `files` (at `version`, or its newest) and checks that
/// every file passed.
fn kubernetes_validate(files: &[PathBuf], version: Option<&str>) {
    let mut command = Command::new("python3");
    command.args(["-m", "kubernetes_validate", "--strict"]);
    if let Some(version) = version {
        command.args(["-k", version]);
    }
    let out = command.args(files).output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate {version:?}:\n{report}"
    );
    assert!(
        !report.contains("Couldn't find schema"),
        "not validated:\n{report}"
    );
    for file in files {
        let documents = std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("kind: "))
            .count();
        let passed = report
            .lines()
            .filter(|l| l.contains(&*file.to_string_lossy()) && l.contains(" passed "))
            .count();
        assert_eq!(
            passed,
            documents,
            "{} has {documents} resource(s), {passed} passed:\n{report}",
            file.display()
        );
    }
    note(&format!(
        "kubernetes-validate ({}): {} file(s) passed",
        version.unwrap_or("newest schemas"),
        files.len()
    ));
}

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    if !tool_works("python3", &["-m", "kubernetes_validate", "--version"]) {
        note("SKIPPED: kubernetes-validate is not installed (scripts/test.sh installs it: pip install kubernetes-validate)");
        return;
    }
    let mut validated = Vec::new();
    for file in kubernetes_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        match unvalidated_reason(kind(&text)) {
            Some(reason) => note(&format!(
                "not schema-validated: {} ({reason})",
                file.display()
            )),
            None => validated.push(file),
        }
    }
    assert!(validated.len() >= 6, "{validated:?}");
    // 1.30: native sidecars (1.29) and the preStop sleep action (1.30) on by default.
    kubernetes_validate(&validated, Some("1.30.0"));
    kubernetes_validate(&validated, None);

    // What `kubectl apply -k deploy/kubernetes` would send.
    if tool_works("kubectl", &["version", "--client"]) {
        let out = Command::new("kubectl")
            .args(["kustomize"])
            .arg(repo().join("deploy/kubernetes"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = temp_path("kustomized.yaml");
        std::fs::write(&rendered, &out.stdout).unwrap();
        kubernetes_validate(std::slice::from_ref(&rendered), Some("1.30.0"));
        let _ = std::fs::remove_file(rendered);
    } else {
        note("kubectl not installed: `kubectl kustomize deploy/kubernetes` not rendered");
    }
}

#[test]
fn configmap_toml_passes_keel_check_and_matches_the_manifests() {
    let configmap = read("deploy/kubernetes/keel-configmap.yaml");
    let toml_text = block_scalar(&configmap, "keel.toml").expect("keel.toml in the ConfigMap");
    let path = temp_path("configmap-keel.toml");
    std::fs::write(&path, &toml_text).unwrap();
    let checked = keel_check(&path);
    let _ = std::fs::remove_file(&path);
    assert!(
        checked.contains("ok: 2 listener(s), 3 route(s), 3 upstream(s)"),
        "{checked}"
    );

    let config: toml::Table = toml::from_str(&toml_text).unwrap();
    let port = |addr: &str| addr.rsplit_once(':').unwrap().1.to_owned();
    let admin = port(config["admin"]["listen"].as_str().unwrap());
    let metrics = port(config["metrics"]["listen"].as_str().unwrap());
    let listeners = config["listeners"].as_array().unwrap();
    let inbound = listeners
        .iter()
        .find(|l| l["direction"].as_str() == Some("inbound"))
        .unwrap();
    let inbound = port(inbound["listen"].as_str().unwrap());
    let app = config["upstreams"]["app"]["endpoints"][0].as_str().unwrap();

    let deployment = read("deploy/kubernetes/deployment.yaml");
    let service = read("deploy/kubernetes/service.yaml");
    let container_ports = values(&deployment, "containerPort");
    for p in [&admin, &metrics, &inbound] {
        assert!(
            container_ports.contains(&p.as_str()),
            "containerPort {p} missing"
        );
    }
    // Probes: startup, liveness and readiness on the admin port, at /ready and /live.
    let probe_ports = values(&deployment, "port");
    assert_eq!(
        probe_ports.iter().filter(|p| **p == admin).count(),
        3,
        "{probe_ports:?}"
    );
    let paths = values(&deployment, "path");
    assert!(paths.contains(&"/live") && paths.contains(&"/ready"));
    // Scraping and the Service.
    assert_eq!(
        values(&deployment, "prometheus.io/port"),
        [metrics.as_str()]
    );
    assert_eq!(values(&deployment, "prometheus.io/path"), ["/metrics"]);
    let targets = values(&service, "targetPort");
    assert!(targets.contains(&inbound.as_str()) && targets.contains(&metrics.as_str()));
    assert!(
        !targets.contains(&admin.as_str()),
        "the admin port stays inside the pod"
    );
    // keel is a native sidecar reading the mounted ConfigMap.
    let init = deployment
        .split("initContainers:")
        .nth(1)
        .unwrap()
        .split("containers:")
        .next()
        .unwrap();
    assert_eq!(values(init, "restartPolicy"), ["Always"]);
    assert!(init.contains(r#"args: ["run", "--config", "/etc/keel/keel.toml"]"#));
    assert_eq!(values(init, "mountPath"), ["/etc/keel"]);
    assert!(
        !deployment.contains("subPath"),
        "subPath mounts never update"
    );
    assert_eq!(
        values(&deployment, "name").last().copied(),
        values(&configmap, "name").first().copied(),
        "the volume names the ConfigMap"
    );
    // The app listens where keel's `app` upstream points.
    let app_port = port(app);
    assert!(deployment.contains(&format!(r#""--upstreams-only", "{app_port}""#)));
    // Termination: the app's preStop sleep, then keel's drain, inside the pod's grace period.
    let seconds = |s: &str| humantime::parse_duration(s).unwrap().as_secs();
    let drain = seconds(config["shutdown"]["drain_delay"].as_str().unwrap())
        + seconds(config["shutdown"]["grace_period"].as_str().unwrap());
    let pre_stop: u64 = values(&deployment, "seconds")[0].parse().unwrap();
    let grace: u64 = values(&deployment, "terminationGracePeriodSeconds")[0]
        .parse()
        .unwrap();
    assert!(
        grace > pre_stop + drain,
        "terminationGracePeriodSeconds {grace} <= {pre_stop} + {drain}"
    );
    // The HPA scales on the bulkhead of an upstream that exists.
    let hpa = read("deploy/kubernetes/hpa.yaml");
    for upstream in values(&hpa, "upstream") {
        assert!(config["upstreams"].get(upstream).is_some(), "{upstream}");
    }
    // ServiceMonitor (no schema available) → the Service's labels and its metrics port name.
    let monitor = read("deploy/kubernetes/servicemonitor.yaml");
    assert!(monitor.contains("apiVersion: monitoring.coreos.com/v1"));
    let label = "app.kubernetes.io/name";
    assert_eq!(values(&monitor, label)[1], values(&service, label)[0]);
    let port_name = values(&monitor, "port")[0];
    assert!(values(&service, "name").contains(&port_name), "{port_name}");
    assert_eq!(values(&monitor, "path"), ["/metrics"]);
    // Everything selects the same pods.
    for file in ["deployment.yaml", "service.yaml", "pdb.yaml"] {
        let text = read(&format!("deploy/kubernetes/{file}"));
        assert!(
            values(&text, label).iter().all(|v| *v == "orders"),
            "{file}"
        );
    }
}

#[test]
fn image_and_compose_configs_pass_keel_check() {
    for file in [
        "docker/keel.toml",
        "docker/keel-a/keel.toml",
        "docker/keel-b/keel.toml",
    ] {
        let out = keel_check(&repo().join(file));
        assert!(out.contains(": ok:"), "{out}");
    }
    let compose = read("docker/compose.yaml");
    for side in ["a", "b"] {
        let mount = format!("./keel-{side}}}:/etc/keel:ro");
        assert!(
            compose.contains(&mount),
            "compose mounts docker/keel-{side}/"
        );
        assert!(compose.contains(&format!("network_mode: \"service:app-{side}\"")));
    }
    // keel-a reaches keel-b's inbound listener by app-b's compose name, and the reverse.
    let a: toml::Table = toml::from_str(&read("docker/keel-a/keel.toml")).unwrap();
    let b: toml::Table = toml::from_str(&read("docker/keel-b/keel.toml")).unwrap();
    let inbound_port = |t: &toml::Table| {
        let listeners = t["listeners"].as_array().unwrap();
        let inbound = listeners
            .iter()
            .find(|l| l["name"].as_str() == Some("inbound"));
        let listen = inbound.unwrap()["listen"].as_str().unwrap();
        listen.rsplit_once(':').unwrap().1.to_owned()
    };
    assert_eq!(
        a["upstreams"]["service-b"]["endpoints"][0]
            .as_str()
            .unwrap(),
        format!("app-b:{}", inbound_port(&b))
    );
    assert_eq!(
        b["upstreams"]["service-a"]["endpoints"][0]
            .as_str()
            .unwrap(),
        format!("app-a:{}", inbound_port(&a))
    );
}

/// The lines of the last `FROM` stage, without comments and blank lines.
fn final_stage(dockerfile: &str) -> Vec<String> {
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let start = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    lines[start..].iter().map(|l| l.to_string()).collect()
}

#[test]
fn both_dockerfiles_build_the_same_runtime_stage() {
    let offline = final_stage(&read("docker/Dockerfile"));
    let builder = final_stage(&read("docker/Dockerfile.builder"));
    assert_eq!(offline[0], "FROM scratch");
    // COPY lines differ only in where the files come from; compare destinations.
    let normalise = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .map(|l| match l.strip_prefix("COPY ") {
                Some(args) => format!("COPY → {}", args.rsplit(' ').next().unwrap()),
                None => l.clone(),
            })
            .collect()
    };
    assert_eq!(normalise(&offline), normalise(&builder));
    for line in [
        "USER 65532:65532",
        r#"ENTRYPOINT ["/keel"]"#,
        r#"CMD ["run", "--config", "/etc/keel/keel.toml"]"#,
    ] {
        assert!(offline.iter().any(|l| l == line), "{line} missing");
    }
    assert!(!offline.iter().any(|l| l.starts_with("HEALTHCHECK")));
}

/// Metric names a real scrape shows, each with the label names seen on it. Histogram series
/// (`_bucket`, `_count`, `_sum`) also count under their base name.
fn catalog(scrape: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut histograms = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" histogram") {
                histograms.insert(name.to_owned());
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let labels: BTreeSet<String> = labels
            .trim_end_matches('}')
            .split(',')
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim().to_owned()))
            .collect();
        names
            .entry(name.to_owned())
            .or_default()
            .extend(labels.clone());
        for suffix in ["_bucket", "_count", "_sum"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if histograms.contains(base) {
                    let mut labels = labels.clone();
                    labels.remove("le");
                    names.entry(base.to_owned()).or_default().extend(labels);
                }
            }
        }
    }
    names
}

/// One metric selector of a query: the metric name and the label names it matches on.
#[derive(Debug)]
struct Selector {
    metric: String,
    labels: Vec<String>,
}

/// The keel/process metric selectors of a PromQL expression and the label names of its
/// `by`/`without`/`on`/`ignoring` clauses. Quoted strings are skipped.
fn parse_promql(expr: &str) -> (Vec<Selector>, Vec<String>) {
    let chars: Vec<char> = expr.chars().collect();
    let mut selectors = Vec::new();
    let mut grouping = Vec::new();
    let mut i = 0;
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // The text between `open` at chars[j] and its closing `close`, quotes respected.
    let enclosed = |j: usize, close: char| -> (String, usize) {
        let mut k = j + 1;
        let mut quoted = false;
        while k < chars.len() && (quoted || chars[k] != close) {
            if chars[k] == '"' {
                quoted = !quoted;
            }
            k += 1;
        }
        (chars[j + 1..k.min(chars.len())].iter().collect(), k + 1)
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += 1;
            }
            i += 1;
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_') || (i > 0 && ident(chars[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let next = skip_space(i);
        let opens = |ch: char| next < chars.len() && chars[next] == ch;
        if word.starts_with("keel_") || word.starts_with("process_") {
            let mut labels = Vec::new();
            if opens('{') {
                let (inner, after) = enclosed(next, '}');
                i = after;
                let mut quoted = false;
                let mut part = String::new();
                for ch in inner.chars().chain([',']) {
                    if ch == '"' {
                        quoted = !quoted;
                    }
                    if ch == ',' && !quoted {
                        let name: String = part.trim().chars().take_while(|c| ident(*c)).collect();
                        if !name.is_empty() {
                            labels.push(name);
                        }
                        part.clear();
                    } else {
                        part.push(ch);
                    }
                }
            }
            selectors.push(Selector {
                metric: word,
                labels,
            });
        } else if ["by", "without", "on", "ignoring"].contains(&word.as_str()) && opens('(') {
            let (inner, after) = enclosed(next, ')');
            i = after;
            grouping.extend(
                inner
                    .split(',')
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    (selectors, grouping)
}

/// Checks that every metric of `expr` is in `known` (or in `derived`, names a
/// prometheus-adapter rule makes up), and every label it uses is on one of its metrics or one
/// that Prometheus adds.
fn check_query(
    expr: &str,
    known: &BTreeMap<String, BTreeSet<String>>,
    added_by_prometheus: &[&str],
) -> usize {
    let (selectors, grouping) = parse_promql(expr);
    let mut available: BTreeSet<String> =
        added_by_prometheus.iter().map(|s| s.to_string()).collect();
    for selector in &selectors {
        let labels = known.get(&selector.metric).unwrap_or_else(|| {
            panic!(
                "`{}` is not a metric keel exports (query: {expr})",
                selector.metric
            )
        });
        for label in &selector.labels {
            assert!(
                labels.contains(label) || added_by_prometheus.contains(&label.as_str()),
                "label `{label}` is not on `{}` (has {labels:?}; query: {expr})",
                selector.metric
            );
        }
        available.extend(labels.iter().cloned());
        if selector.metric.ends_with("_bucket") {
            available.insert("le".into());
        }
    }
    for label in &grouping {
        assert!(
            available.contains(label),
            "grouping label `{label}` is on none of the query's metrics ({expr})"
        );
    }
    selectors.len()
}

/// A keel with traffic of every kind the dashboard shows: 2xx, a breaker that opened, a
/// reload; then its `/metrics`.
async fn real_scrape() -> String {
    let ok = upstream(Behaviour::Respond).await;
    let down = upstream(Behaviour::Status(503)).await;
    let path = temp_path("dashboard.toml");
    let toml = |timeout: &str| {
        format!(
            r#"
[[listeners]]
name = "inbound"
direction = "inbound"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  name = "api"
  match = {{ path_prefix = "/api/" }}
  upstream = "backend"
  timeout = "{timeout}"
  retry = {{ attempts = 2 }}
  [[listeners.routes]]
  name = "failing"
  upstream = "down"
[upstreams.backend]
endpoints = ["{}"]
[upstreams.down]
endpoints = ["{}"]
  [upstreams.down.breaker]
  consecutive_failures = 2
"#,
            ok.addr, down.addr
        )
    };
    let keel = spawn_keel_from_file(&path, &toml("5s")).await;
    let addr = keel.addr("inbound");
    assert_eq!(get(addr, "svc", "/api/x").await.status, 200);
    for _ in 0..3 {
        get(addr, "svc", "/other").await;
    }
    let reloaded = with_loopback_admin(&toml("6s"));
    std::fs::write(&path, reloaded).unwrap();
    let reloader = keel.running.as_ref().unwrap().reloader().clone();
    reloader.reload().await.unwrap();
    // A reload finished (applied by this call or by the file watcher) is counted before
    // `reload` returns.
    let text = get(keel.metrics(), "metrics", "/metrics").await.body;
    assert!(
        text.contains("keel_config_reloads_total{result=\"success\"}"),
        "{text}"
    );
    let _ = std::fs::remove_file(path);
    text
}

/// The PromQL expressions of the dashboard's panels, and its template variable queries.
fn dashboard_queries(dashboard: &Value) -> (Vec<String>, Vec<String>) {
    let mut exprs = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id"
        );
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel without queries: {panel}");
        for target in targets {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| v["definition"].as_str().unwrap().to_owned())
        .collect();
    (exprs, variables)
}

/// `label_values(SELECTOR, label)` → (SELECTOR, label).
fn label_values(query: &str) -> (&str, &str) {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected variable query {query}"));
    inner.rsplit_once(',').map(|(s, l)| (s, l.trim())).unwrap()
}

/// The prometheus-adapter rules: (seriesQuery, metricsQuery, the name served) each.
fn adapter_rules() -> Vec<(String, String, String)> {
    let rules = read("deploy/kubernetes/prometheus-adapter-rules.yaml");
    let config = block_scalar(&rules, "config.yaml").unwrap();
    let quoted = |key: &str| -> Vec<String> {
        values(&config, key)
            .into_iter()
            .map(|v| v.trim_matches('\'').to_owned())
            .collect()
    };
    let (series, queries, names) = (quoted("seriesQuery"), quoted("metricsQuery"), quoted("as"));
    assert!(series.len() == queries.len() && series.len() == names.len());
    series
        .into_iter()
        .zip(queries)
        .zip(names)
        .map(|((s, q), n)| (s, q, n))
        .collect()
}

#[tokio::test]
async fn grafana_and_adapter_queries_use_what_keel_exports() {
    let scrape = real_scrape().await;
    let known = catalog(&scrape);
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/keel.json")).unwrap();
    let (exprs, variables) = dashboard_queries(&dashboard);
    assert!(exprs.len() >= 15, "{exprs:?}");
    let target_labels = ["job", "instance"];
    let mut used = BTreeSet::new();
    for expr in &exprs {
        assert!(check_query(expr, &known, &target_labels) >= 1, "{expr}");
        used.extend(parse_promql(expr).0.into_iter().map(|s| s.metric));
    }
    for query in &variables {
        let (selector, label) = label_values(query);
        check_query(selector, &known, &target_labels);
        let metric = parse_promql(selector).0.remove(0).metric;
        assert!(
            known[&metric].contains(label) || target_labels.contains(&label),
            "{query}"
        );
    }
    // The dashboard covers what the issue asks for.
    for metric in [
        "keel_requests_total",
        "keel_request_duration_seconds_bucket",
        "keel_breaker_state",
        "keel_upstream_requests_active",
        "keel_upstream_requests_pending",
        "keel_upstream_connections",
        "keel_upstream_rejected_total",
    ] {
        assert!(
            used.contains(metric),
            "the dashboard does not show {metric}"
        );
    }
    let text = serde_json::to_string(&dashboard).unwrap();
    assert!(text.contains("histogram_quantile(0.5,") && text.contains("histogram_quantile(0.99,"));

    // prometheus-adapter: series from keel, with the labels the scrape job adds; the HPA asks
    // only for names the rules serve.
    let pod_labels = ["job", "instance", "namespace", "pod"];
    let rules = adapter_rules();
    let served: BTreeSet<String> = rules.iter().map(|r| r.2.clone()).collect();
    for (series, query, _) in &rules {
        check_query(series, &known, &pod_labels);
        let metric = parse_promql(series).0.remove(0).metric;
        let query = adapter_query(query, &metric);
        check_query(&query, &known, &pod_labels);
    }
    let hpa = read("deploy/kubernetes/hpa.yaml");
    let asked = values(&hpa, "name");
    let asked: Vec<_> = asked.iter().filter(|n| n.starts_with("keel_")).collect();
    assert!(!asked.is_empty());
    for name in asked {
        assert!(
            served.contains(*name),
            "HPA metric {name} is not served by the adapter rules"
        );
    }
    note(&format!(
        "{} dashboard queries, {} variables and {} adapter rules checked against a scrape of {} metric names",
        exprs.len(),
        variables.len(),
        rules.len(),
        known.len()
    ));
}

/// An adapter metricsQuery with its templates filled in as the adapter would.
fn adapter_query(query: &str, metric: &str) -> String {
    query
        .replace("<<.Series>>", metric)
        .replace(
            "<<.LabelMatchers>>",
            r#"namespace="default",pod=~"orders-.*""#,
        )
        .replace("<<.GroupBy>>", "pod")
}

/// Grafana's variables replaced by values Prometheus accepts.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("\"$job\"", "\".*\"")
        .replace("\"$instance\"", "\".*\"")
        .replace("\"$upstream\"", "\".*\"")
}

#[test]
fn dashboard_and_adapter_queries_parse_as_promql() {
    if !tool_works("promtool", &["--version"]) {
        note(
            "SKIPPED: promtool not found (scripts/test.sh installs Debian's `prometheus` package)",
        );
        return;
    }
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/keel.json")).unwrap();
    let (mut exprs, _) = dashboard_queries(&dashboard);
    for expr in &mut exprs {
        *expr = grafana_to_promql(expr);
        assert!(!expr.contains('$'), "unreplaced variable in {expr}");
    }
    for (series, query, _) in adapter_rules() {
        let metric = parse_promql(&series).0.remove(0).metric;
        exprs.push(series.clone());
        exprs.push(adapter_query(&query, &metric));
    }
    let mut rules = String::from("groups:\n  - name: keel-deploy-queries\n    rules:\n");
    for (n, expr) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: keel_deploy:query_{n}\n        expr: |\n"
        ));
        for line in expr.lines() {
            rules.push_str(&format!("          {line}\n"));
        }
    }
    let path = temp_path("queries.rules.yaml");
    std::fs::write(&path, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    note(&format!("promtool: {} queries parse", exprs.len()));
}
