//! keel deployed beside real containers, for real: the image built offline by
//! `docker/build.sh` (a static binary on `scratch`), and the two-service compose example
//! `docker/compose.yaml` (app A → keel-a → keel-b → app B) driven end to end: trace context
//! crossing both sidecars, both metrics endpoints, keel-a's breaker opening when service B's
//! container stops and closing when it is back, a live reload from a config directory updated
//! the way the kubelet updates a ConfigMap volume, and a SIGTERM drain with requests in flight.
//!
//! Needs a Docker daemon and Compose (`docker compose` or `docker-compose`); without them the
//! test says why on stderr and passes. `KEEL_TEST_IMAGE=TAG` uses an image already built instead
//! of running `docker/build.sh`. Everything the test creates (containers, network, volumes) is
//! removed when it ends, whatever happens; the image `keel:local` is kept for the next run.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Writes to the real stderr, past the test harness's capture: skips and timings show in CI.
fn note(message: &str) {
    let _ = writeln!(std::io::stderr(), "deploy: {message}");
}

/// keel-a's config in the compose example; the test serves it from a [`ConfigMapDir`].
const KEEL_A: &str = "docker/keel-a/keel.toml";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command and returns its stdout; panics with both streams when it fails.
fn run(command: &mut Command) -> String {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn docker(args: &[&str]) -> String {
    run(Command::new("docker").args(args))
}

/// The Compose command available: the v2 plugin (`docker compose`) or v1 (`docker-compose`).
fn compose_command() -> Option<(String, Vec<String>)> {
    if succeeds("docker", &["compose", "version"]) {
        return Some(("docker".into(), vec!["compose".into()]));
    }
    if succeeds("docker-compose", &["version"]) {
        return Some(("docker-compose".into(), Vec::new()));
    }
    None
}

/// One running copy of docker/compose.yaml under a project name of its own; dropping it tears
/// everything down (`down -v`), after printing the logs if the test is failing.
struct Stack {
    program: String,
    base: Vec<String>,
    project: String,
    file: PathBuf,
    image: String,
    /// keel-a's config directory, laid out as the kubelet lays out a ConfigMap volume.
    config_a: ConfigMapDir,
    /// Container ids by service (Compose v1 takes half a second per `ps`; ids survive
    /// stop, start and restart).
    ids: RefCell<HashMap<String, String>>,
}

impl Stack {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(&self.base)
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(&self.file)
            .args(args)
            .env("KEEL_IMAGE", &self.image)
            .env("KEEL_A_CONFIG_DIR", &self.config_a.root)
            .env("KEEL_B_CONFIG_DIR", "");
        // Host ports chosen by Docker, whatever the caller's environment says.
        for port in [
            "KEEL_A_OUTBOUND_PORT",
            "KEEL_A_ADMIN_PORT",
            "KEEL_A_METRICS_PORT",
            "KEEL_B_ADMIN_PORT",
            "KEEL_B_METRICS_PORT",
        ] {
            command.env(port, "");
        }
        command
    }

    fn compose(&self, args: &[&str]) -> String {
        run(&mut self.command(args))
    }

    /// The host address Docker published `port` of `service` on.
    fn port(&self, service: &str, port: u16) -> SocketAddr {
        let out = self.compose(&["port", service, &port.to_string()]);
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("port {service} {port}: {out:?}: {e}"))
    }

    /// The container id of a service (running or stopped).
    fn id(&self, service: &str) -> String {
        if let Some(id) = self.ids.borrow().get(service) {
            return id.clone();
        }
        let out = self.compose(&["ps", "-a", "-q", service]);
        let id = out.trim().to_owned();
        assert!(!id.is_empty(), "no container for {service}");
        self.ids.borrow_mut().insert(service.to_owned(), id.clone());
        id
    }

    /// What the service's container wrote to stdout (keel: the access log) and to stderr.
    fn logs(&self, service: &str) -> (String, String) {
        let out: Output = Command::new("docker")
            .args(["logs", &self.id(service)])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (text(&out.stdout), text(&out.stderr))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(out) = self
                .command(&["logs", "--no-color", "--tail", "40"])
                .output()
            {
                note(&format!("logs of {}:\n{}", self.project, text(&out.stdout)));
            }
        }
        let torn_down = self
            .command(&["down", "-v", "--remove-orphans", "-t", "5"])
            .stdin(Stdio::null())
            .output();
        match torn_down {
            Ok(out) if out.status.success() => {}
            Ok(out) => note(&format!(
                "`down` of {} failed: {}",
                self.project,
                text(&out.stderr)
            )),
            Err(e) => note(&format!("`down` of {} failed: {e}", self.project)),
        }
    }
}

/// A directory written the way the kubelet updates a ConfigMap volume (its "atomic writer"):
/// the files live in a timestamped directory, `..data` is a symlink to it, and `keel.toml` a
/// symlink to `..data/keel.toml`; an update writes a new directory and renames a new `..data`
/// symlink over the old one.
struct ConfigMapDir {
    root: PathBuf,
    version: u32,
}

impl ConfigMapDir {
    fn new(text: &str) -> ConfigMapDir {
        let root = std::env::temp_dir().join(format!("keel-deploy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        // keel runs as 65532 in the container: it must be able to read this.
        set_mode(&root, 0o755);
        std::os::unix::fs::symlink("..data/keel.toml", root.join("keel.toml")).unwrap();
        let mut dir = ConfigMapDir { root, version: 0 };
        dir.update(text);
        dir
    }

    fn update(&mut self, text: &str) {
        self.version += 1;
        let data = format!("..v{}", self.version);
        let dir = self.root.join(&data);
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o755);
        std::fs::write(dir.join("keel.toml"), text).unwrap();
        set_mode(&dir.join("keel.toml"), 0o644);
        let staged = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &staged).unwrap();
        std::fs::rename(&staged, self.root.join("..data")).unwrap();
        if self.version > 1 {
            let old = self.root.join(format!("..v{}", self.version - 1));
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

impl Drop for ConfigMapDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A response read off an HTTP/1.1 connection the test closed itself (`Connection: close`).
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    elapsed: Duration,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn keel_error(&self) -> Option<&str> {
        self.header("keel-error")
    }
}

/// `GET path` with `Host: host` and extra headers; any I/O or parse problem is an `Err`
/// (Docker's port proxy accepts connections even while nothing listens behind it).
fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    limit: Duration,
) -> std::io::Result<Reply> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, limit)?;
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let elapsed = started.elapsed();
    let raw = text(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{raw:?}"));
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(bad)?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_owned(),
        elapsed,
    })
}

/// Polls `check` every 100 ms until it gives a value; panics after `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        #[allow(clippy::disallowed_methods)] // a plain #[test]: no async runtime here
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_ready(admin: SocketAddr, who: &str) {
    let limit = Duration::from_secs(2);
    wait_for(Duration::from_secs(30), &format!("{who} /ready"), || {
        let reply = get(admin, "admin", "/ready", &[], limit).ok()?;
        (reply.status == 200).then_some(())
    });
}

/// The value of the sample `name{labels}` (every given label must match), if present.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            (metric == name && all)
                .then(|| value.parse().ok())
                .flatten()
        })
}

fn scrape(metrics: SocketAddr) -> String {
    let reply = get(metrics, "metrics", "/metrics", &[], Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("scrape {metrics}: {e}"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

/// The access log line (stdout JSON) of `service` whose `request_id` is `id`.
fn access_line(stack: &Stack, service: &str, id: &str) -> Value {
    wait_for(
        Duration::from_secs(10),
        &format!("{service} access log line for {id}"),
        || {
            let (stdout, _) = stack.logs(service);
            stdout
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["request_id"] == id)
        },
    )
}

fn build_image() -> String {
    if let Ok(image) = std::env::var("KEEL_TEST_IMAGE") {
        note(&format!("using KEEL_TEST_IMAGE={image}, not building"));
        return image;
    }
    let image = "keel:local".to_owned();
    let out = run(Command::new(repo().join("docker/build.sh")).arg(&image));
    note(out.trim());
    image
}

/// Checks the image itself: size, user, entrypoint, no HEALTHCHECK, and that the binary runs
/// in the empty image and accepts the default config.
fn check_image(image: &str) {
    let size: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", image])
        .trim()
        .parse()
        .unwrap();
    note(&format!(
        "image {image}: {size} bytes ({:.1} MB)",
        size as f64 / 1e6
    ));
    assert!(size < 15_000_000, "image is {size} bytes, target < 15 MB");
    let config = docker(&[
        "image",
        "inspect",
        "-f",
        "{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Cmd}}|{{json .Config.Healthcheck}}",
        image,
    ]);
    assert_eq!(
        config.trim(),
        r#"65532:65532|["/keel"]|["run","--config","/etc/keel/keel.toml"]|null"#
    );
    let check = docker(&[
        "run",
        "--rm",
        image,
        "check",
        "--config",
        "/etc/keel/keel.toml",
    ]);
    assert!(check.contains(": ok:"), "{check}");
}

/// A fresh W3C trace id for this run.
fn trace_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:016x}{:016x}", std::process::id(), nanos as u64)
}

#[test]
fn compose_stack_a_to_b_breaker_and_drain() {
    let started = Instant::now();
    if !succeeds("docker", &["info"]) {
        note("SKIPPED: no Docker daemon reachable (`docker info` failed)");
        return;
    }
    let Some((program, base)) = compose_command() else {
        note("SKIPPED: neither `docker compose` nor `docker-compose` is installed");
        return;
    };

    // 1. The image, built offline.
    let image = build_image();
    check_image(&image);
    let built = started.elapsed();
    note(&format!("image ready in {built:.1?}"));

    // 2. The stack.
    let mut stack = Stack {
        program,
        base,
        project: format!("keel-test-{}", std::process::id()),
        file: repo().join("docker/compose.yaml"),
        image,
        config_a: ConfigMapDir::new(&std::fs::read_to_string(repo().join(KEEL_A)).unwrap()),
        ids: RefCell::default(),
    };
    let phase = Instant::now();
    stack.compose(&["up", "-d"]);
    let outbound_a = stack.port("app-a", 15001);
    let admin_a = stack.port("app-a", 9900);
    let metrics_a = stack.port("app-a", 9901);
    let admin_b = stack.port("app-b", 9900);
    let metrics_b = stack.port("app-b", 9901);
    wait_ready(admin_a, "keel-a");
    wait_ready(admin_b, "keel-b");
    let live = get(admin_a, "admin", "/live", &[], Duration::from_secs(2)).unwrap();
    assert_eq!(live.status, 200);
    note(&format!(
        "stack {} up and both keels ready in {:.1?}",
        stack.project,
        phase.elapsed()
    ));

    // 3. App A → keel-a (outbound, Host: service-b) → keel-b (inbound) → app B, and the trace
    //    context crossing both sidecars: a trace id the caller sent, and one keel-a started.
    let phase = Instant::now();
    let limit = Duration::from_secs(10);
    let given = trace_id();
    let run_id = std::process::id();
    let (with_trace, without_trace) = (format!("t-{run_id}-1"), format!("t-{run_id}-2"));
    let traceparent = format!("00-{given}-00f067aa0ba902b7-01");
    let reply = get(
        outbound_a,
        "service-b",
        "/hello",
        &[("traceparent", &traceparent), ("x-request-id", &with_trace)],
        limit,
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.body.contains("healthy upstream: GET /hello"),
        "{reply:?}"
    );
    let reply = get(
        outbound_a,
        "service-b",
        "/hello",
        &[("x-request-id", &without_trace)],
        limit,
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");

    let a = access_line(&stack, "keel-a", &with_trace);
    let b = access_line(&stack, "keel-b", &with_trace);
    assert_eq!(a["trace_id"], given.as_str(), "keel-a: {a}");
    assert_eq!(b["trace_id"], given.as_str(), "keel-b: {b}");
    assert_eq!(a["listener"], "outbound");
    assert_eq!(a["upstream"], "service-b");
    assert_eq!(b["listener"], "inbound");
    assert_eq!(b["endpoint"], "127.0.0.1:8080");
    // keel-a found keel-b by its compose name: the static glibc resolver works in `scratch`.
    let endpoint = a["endpoint"].as_str().unwrap_or_default();
    assert!(endpoint.ends_with(":15006"), "keel-a endpoint: {a}");
    assert_ne!(a["span_id"], b["span_id"], "each hop has its own span");

    let a = access_line(&stack, "keel-a", &without_trace);
    let b = access_line(&stack, "keel-b", &without_trace);
    let started_by_a = a["trace_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(started_by_a.len(), 32, "keel-a: {a}");
    assert_ne!(started_by_a, "0".repeat(32));
    assert_eq!(b["trace_id"], started_by_a.as_str(), "keel-b: {b}");
    note(&format!(
        "A → B with trace ids crossing both sidecars ({given}, {started_by_a}; keel-b at {endpoint}) in {:.1?}",
        phase.elapsed()
    ));

    // 4. Both metrics endpoints.
    let text_a = scrape(metrics_a);
    let text_b = scrape(metrics_b);
    let ok = |listener, route, upstream| {
        vec![
            ("listener", listener),
            ("route", route),
            ("upstream", upstream),
            ("code_class", "2xx"),
        ]
    };
    let sent_a = sample(
        &text_a,
        "keel_requests_total",
        &ok("outbound", "service-b", "service-b"),
    );
    let served_b = sample(&text_b, "keel_requests_total", &ok("inbound", "app", "app"));
    assert!(sent_a >= Some(2.0), "keel-a metrics:\n{text_a}");
    assert!(served_b >= Some(2.0), "keel-b metrics:\n{text_b}");
    for text in [&text_a, &text_b] {
        assert!(sample(text, "keel_build_info", &[]).is_some());
        assert!(sample(text, "process_resident_memory_bytes", &[]).is_some());
    }
    assert_eq!(
        sample(&text_a, "keel_breaker_state", &[("upstream", "service-b")]),
        Some(0.0)
    );
    for (name, text) in [("keel-a", &text_a), ("keel-b", &text_b)] {
        let rss = sample(text, "process_resident_memory_bytes", &[]).unwrap_or_default();
        note(&format!(
            "{name} resident memory now: {:.1} MiB",
            rss / 1048576.0
        ));
    }

    // 5. Service B's container stops: keel-a's requests to it fail (a pooled connection that
    //    goes unanswered, then connect errors), its breaker opens after 3 failures in a row,
    //    and from then on keel-a answers 503 circuit-open at once, touching no socket.
    let phase = Instant::now();
    stack.compose(&["stop", "-t", "5", "app-b"]);
    let mut before_open = Vec::new();
    wait_for(
        Duration::from_secs(45),
        "keel-a answering circuit-open",
        || match get(outbound_a, "service-b", "/hello", &[], limit) {
            Ok(reply) if reply.keel_error() == Some("circuit-open") => {
                assert_eq!(reply.status, 503, "{reply:?}");
                assert!(reply.header("retry-after").is_some(), "{reply:?}");
                Some(())
            }
            Ok(reply) => {
                before_open.push(format!(
                    "{} {} {:.0?}",
                    reply.status,
                    reply.keel_error().unwrap_or("-"),
                    reply.elapsed
                ));
                None
            }
            Err(e) => panic!("keel-a did not answer: {e}"),
        },
    );
    assert!(
        before_open.len() >= 3,
        "the breaker opened after {before_open:?}"
    );
    for line in &before_open {
        assert!(
            line.starts_with("502 upstream-") || line.starts_with("504 upstream-"),
            "{before_open:?}"
        );
    }
    let tripped = phase.elapsed();
    let fast: Vec<_> = (0..3)
        .map(|_| get(outbound_a, "service-b", "/hello", &[], limit).unwrap())
        .collect();
    for reply in &fast {
        assert_eq!(reply.keel_error(), Some("circuit-open"), "{reply:?}");
        assert!(
            reply.elapsed < Duration::from_millis(200),
            "circuit-open took {:?}",
            reply.elapsed
        );
    }
    let text_a = scrape(metrics_a);
    let rejected = sample(
        &text_a,
        "keel_upstream_rejected_total",
        &[("upstream", "service-b"), ("reason", "circuit_open")],
    );
    assert!(rejected >= Some(4.0), "keel-a metrics:\n{text_a}");
    let state = sample(&text_a, "keel_breaker_state", &[("upstream", "service-b")]);
    assert!(state >= Some(1.0), "breaker state {state:?}");
    let open_line = wait_for(limit, "a circuit-open access log line", || {
        let (stdout, _) = stack.logs("keel-a");
        stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["keel_error"] == "circuit-open")
    });
    assert_eq!(open_line["flags"]["breaker_open"], true, "{open_line}");
    note(&format!(
        "app-b stopped: breaker open after {before_open:?} in {tripped:.1?}; circuit-open in {:?}",
        fast.iter().map(|r| r.elapsed).collect::<Vec<_>>()
    ));

    // 6. Service B back. keel-b lived in the network namespace of app-b's previous run; Docker
    //    gives the restarted app-b a new one and does not move the sidecar along, so B's
    //    sidecar restarts with it (in a Kubernetes pod the pause container holds the namespace
    //    and this step does not exist). keel-a re-resolves app-b and its breaker closes after
    //    a successful half-open probe.
    let phase = Instant::now();
    stack.compose(&["start", "app-b"]);
    stack.compose(&["restart", "-t", "15", "keel-b"]);
    let admin_b = stack.port("app-b", 9900);
    wait_ready(admin_b, "keel-b after restart");
    wait_for(Duration::from_secs(60), "keel-a reaching B again", || {
        let reply = get(outbound_a, "service-b", "/hello", &[], limit).ok()?;
        (reply.status == 200).then_some(())
    });
    wait_for(Duration::from_secs(10), "keel-a breaker closed", || {
        let text = scrape(metrics_a);
        (sample(&text, "keel_breaker_state", &[("upstream", "service-b")]) == Some(0.0))
            .then_some(())
    });
    note(&format!(
        "app-b back: keel-a recovered in {:.1?}",
        phase.elapsed()
    ));

    // 7. A config change delivered the way the kubelet updates a mounted ConfigMap (a new
    //    `..data` symlink renamed into place): keel-a sees it in its directory and reloads
    //    live, no restart; the new route answers and the reload is counted.
    let phase = Instant::now();
    let before = get(outbound_a, "reloaded", "/hello", &[], limit).unwrap();
    assert_eq!(before.keel_error(), Some("no-route"), "{before:?}");
    let config = std::fs::read_to_string(repo().join(KEEL_A)).unwrap();
    let anchor = "\n[upstreams.app]\n";
    assert!(config.contains(anchor), "{KEEL_A} changed shape");
    let route = "\n  [[listeners.routes]]\n  name = \"reloaded\"\n  match = { host = \"reloaded\" }\n  upstream = \"service-b\"\n";
    stack
        .config_a
        .update(&config.replacen(anchor, &format!("{route}{anchor}"), 1));
    wait_for(
        Duration::from_secs(20),
        "keel-a serving the new route",
        || {
            let reply = get(outbound_a, "reloaded", "/hello", &[], limit).ok()?;
            (reply.status == 200).then_some(())
        },
    );
    let text_a = scrape(metrics_a);
    assert_eq!(
        sample(
            &text_a,
            "keel_config_reloads_total",
            &[("result", "success")]
        ),
        Some(1.0),
        "{text_a}"
    );
    let (_, stderr) = stack.logs("keel-a");
    assert!(stderr.contains("config reloaded"), "{stderr}");
    note(&format!(
        "ConfigMap-style update: keel-a reloaded live in {:.1?}",
        phase.elapsed()
    ));

    // 8. SIGTERM to keel-a with three requests in flight to B's slow upstream (2 s each): they
    //    complete with 200, and keel-a exits 0 once they are done.
    let phase = Instant::now();
    let in_flight: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let reply = get(
                    outbound_a,
                    "service-b",
                    "/slow",
                    &[],
                    Duration::from_secs(20),
                );
                (reply, Instant::now())
            })
        })
        .collect();
    wait_for(
        Duration::from_secs(10),
        "3 requests in flight in keel-a",
        || {
            let text = scrape(metrics_a);
            let active = sample(
                &text,
                "keel_upstream_requests_active",
                &[("upstream", "service-b")],
            );
            (active == Some(3.0)).then_some(())
        },
    );
    let keel_a = stack.id("keel-a");
    let signalled = Instant::now();
    docker(&["kill", "-s", "TERM", &keel_a]);
    for handle in in_flight {
        let (reply, finished) = handle.join().unwrap();
        let reply = reply.unwrap_or_else(|e| panic!("in-flight request lost on SIGTERM: {e}"));
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(reply.body.contains("slow upstream"), "{reply:?}");
        assert!(
            finished > signalled,
            "the request was still in flight at SIGTERM"
        );
    }
    let exit_code = wait_for(Duration::from_secs(15), "keel-a to exit", || {
        let state = docker(&[
            "inspect",
            "-f",
            "{{.State.Running}} {{.State.ExitCode}}",
            &keel_a,
        ]);
        let (running, code) = state.trim().split_once(' ')?;
        (running == "false").then(|| code.to_owned())
    });
    let drained = signalled.elapsed();
    assert_eq!(exit_code, "0");
    let (_, stderr) = stack.logs("keel-a");
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert!(stderr.contains("drained"), "{stderr}");
    note(&format!(
        "SIGTERM: 3 in-flight requests completed with 200, keel-a exited 0 {drained:.1?} after the signal (phase {:.1?})",
        phase.elapsed()
    ));

    drop(stack);
    note(&format!(
        "compose test done in {:.1?} (image {built:.1?}, stack {:.1?})",
        started.elapsed(),
        started.elapsed() - built
    ));
}
