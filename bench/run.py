#!/usr/bin/env python3
"""keel side by side with nginx and HAProxy, on loopback, bounded in time.

Run from the repository root (or anywhere inside the clone):

    python3 bench/run.py              # full run: 3 interleaved repetitions, about 15 minutes
    python3 bench/run.py --quick      # 1 short repetition, to try the setup (about 2 minutes)
    python3 bench/run.py --no-oha     # skip the fixed-rate latency part (wrk latency instead)

What it does (see bench/README.md for the why):

- installs the Debian packages nginx, haproxy and wrk when missing (apt-get update first, as
  root), and oha with `cargo install oha --locked` when missing and --no-oha is not given;
- builds keel with `cargo build --release`;
- starts one upstream nginx (one worker process) serving a 2-byte and a 16 KiB body, pinned to
  core 0 with every proxy; wrk and oha run on core 1;
- for each repetition, body size and configuration (direct, keel, nginx, haproxy; the order
  rotates between repetitions), starts the proxy fresh and measures saturation throughput
  (wrk, 64 connections, one thread), CPU time per request of the proxy and of the upstream
  (utime + stime from /proc/PID/stat), latency at a fixed rate (oha -q 5000
  --latency-correction) and peak RSS (VmHWM);
- for keel also the CPU per request of breaker-open and bulkhead-full rejections;
- measures idle RSS and RSS with 10,000 idle keep-alive client connections;
- flags every measured phase that other processes disturbed (CPU used by processes other than
  the proxy, the upstream and the load generator, and steal time, from /proc);
- prints markdown tables (medians with min-max) and writes them, with the raw numbers as JSON,
  to bench/results/.

Only the Python standard library is used. Every phase has a time limit; nothing listens on
anything but 127.0.0.1.
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PROXY_CORE = "0"
LOAD_CORE = "1"
BODIES = {"2B": "/2b", "16KiB": "/16k"}
CONFIGS = ["direct", "keel", "nginx", "haproxy"]
# A phase is "disturbed" when processes other than ours used more than this share of one core
# during it, or the hypervisor stole more than STEAL_LIMIT of the machine's time.
OTHER_LIMIT = 0.03
STEAL_LIMIT = 0.01


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# setup


def have(cmd):
    return shutil.which(cmd) is not None


def ensure_packages():
    missing = [p for p, cmd in (("nginx", "nginx"), ("haproxy", "haproxy"), ("wrk", "wrk")) if not have(cmd)]
    for extra in ("/usr/sbin/nginx", "/usr/sbin/haproxy"):
        if os.path.exists(extra):
            os.environ["PATH"] += ":" + os.path.dirname(extra)
    missing = [p for p in missing if not have(p)]
    if not have("taskset"):
        missing.append("util-linux")
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"bench: missing {', '.join(missing)}; install them (apt-get install {' '.join(missing)}) or run as root")
    log(f"bench: installing {', '.join(missing)} (apt-get update first)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def find_oha():
    for path in (shutil.which("oha"), os.path.expanduser("~/.cargo/bin/oha")):
        if path and os.path.exists(path):
            return path
    return None


def ensure_oha(args):
    if args.no_oha:
        return None
    oha = find_oha()
    if oha:
        return oha
    log("bench: oha is not installed; running `cargo install oha --locked`.")
    log("bench: this takes a long time (about 15 minutes on 2 cores); --no-oha skips the fixed-rate")
    log("bench: latency part instead and reports wrk's latency at saturation.")
    subprocess.run(["cargo", "install", "oha", "--locked"], check=True)
    oha = find_oha()
    if not oha:
        sys.exit("bench: cargo install oha finished but no oha binary was found")
    return oha


def build_keel(args):
    if args.keel_bin:
        return os.path.abspath(args.keel_bin)
    log("bench: cargo build --release")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    return os.path.join(target, "release", "keel")


def raise_nofile(n=65536):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(n, hard) if hard != resource.RLIM_INFINITY else n)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want) if hard != resource.RLIM_INFINITY else hard))
    except (ValueError, OSError):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def http_get(port, path, timeout=5):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


# ----------------------------------------------------------------------------------------------
# /proc readings


def proc_times(pid):
    """(utime, stime) of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu(pid):
    """utime + stime of a process (all its threads), in seconds."""
    return sum(proc_times(pid))


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def others_cpu(exclude):
    """utime+stime+cutime+cstime of every process except ours, by pid (seconds)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in exclude:
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
            # ksoftirqd does the loopback traffic's deferred network work, ours included.
            if "(ksoftirqd/" in text:
                continue
            fields = text.rsplit(")", 1)[1].split()
            out[pid] = sum(int(x) for x in fields[11:15]) / CLK_TCK
        except (OSError, IndexError, ValueError):
            continue
    return out


def machine_stat():
    with open("/proc/stat") as f:
        cpu = f.readline().split()[1:]
    vals = [int(x) for x in cpu]
    total = sum(vals[:8])
    steal = vals[7] if len(vals) > 7 else 0
    return total / CLK_TCK, steal / CLK_TCK


class Window:
    """CPU accounting around one measured phase; detects disturbance by other processes."""

    def __init__(self, pids, exclude):
        self.pids = {k: v for k, v in pids.items() if v}
        self.exclude = set(exclude) | {os.getpid()}

    def __enter__(self):
        self.t0 = time.monotonic()
        self.cpu0 = {k: proc_cpu(p) for k, p in self.pids.items()}
        self.sys0 = {k: proc_times(p)[1] for k, p in self.pids.items()}
        self.others0 = others_cpu(self.exclude | set(self.pids.values()))
        self.stat0 = machine_stat()
        self.load0 = os.getloadavg()[0]
        return self

    def __exit__(self, *exc):
        self.wall = time.monotonic() - self.t0
        self.cpu = {k: proc_cpu(p) - self.cpu0[k] for k, p in self.pids.items()}
        self.sys = {k: proc_times(p)[1] - self.sys0[k] for k, p in self.pids.items()}
        others1 = others_cpu(self.exclude | set(self.pids.values()))
        other = 0.0
        for pid, v in others1.items():
            other += v - self.others0.get(pid, 0.0)
        self.other = max(other, 0.0)
        total1, steal1 = machine_stat()
        self.steal = (steal1 - self.stat0[1]) / max(total1 - self.stat0[0], 1e-9)
        self.load = os.getloadavg()[0]
        self.other_share = self.other / max(self.wall, 1e-9)
        self.disturbed = self.other_share > OTHER_LIMIT or self.steal > STEAL_LIMIT
        return False

    def summary(self):
        return {
            "wall_s": round(self.wall, 3),
            "other_cpu_share": round(self.other_share, 4),
            "steal_share": round(self.steal, 4),
            "loadavg_before": self.load0,
            "loadavg_after": self.load,
            "disturbed": self.disturbed,
        }


# ----------------------------------------------------------------------------------------------
# load generators

WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d p50=%d p99=%d p999=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


def run_child(cmd, timeout):
    """Runs a load generator pinned to the load core; returns (stdout, cpu seconds used)."""
    p = subprocess.Popen(["taskset", "-c", LOAD_CORE, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise RuntimeError(f"{cmd[0]} did not finish within {timeout}s")
    # communicate() reaped the child; its CPU is in our children's rusage.
    return out, err, p.returncode


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wrk(port, path, seconds, connections, lua):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", lua, f"http://127.0.0.1:{port}{path}"]
    out, err, code = run_child(cmd, seconds + 30)
    for line in out.splitlines():
        if line.startswith("BENCH "):
            kv = dict(x.split("=") for x in line.split()[1:])
            res = {k: int(v) for k, v in kv.items()}
            res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
            res["errors"] = res["connect"] + res["read"] + res["write"] + res["timeout"]
            return res
    raise RuntimeError(f"wrk printed no result (exit {code}): {out}\n{err}")


def oha_flags(oha):
    help_text = subprocess.run([oha, "--help"], capture_output=True, text=True).stdout
    if "--output-format" in help_text:
        return ["--output-format", "json"]
    return ["-j"]


def oha_run(oha, flags, port, path, seconds, rate, connections):
    cmd = [oha, "--no-tui", *flags, "-z", f"{seconds}s", "-q", str(rate), "--latency-correction",
           "-c", str(connections), f"http://127.0.0.1:{port}{path}"]
    out, err, code = run_child(cmd, seconds + 30)
    try:
        data = json.loads(out)
    except json.JSONDecodeError:
        raise RuntimeError(f"oha printed no JSON (exit {code}): {out[:500]}\n{err[:500]}")
    pct = data.get("latencyPercentiles", {})
    summary = data.get("summary", {})
    status = data.get("statusCodeDistribution", {})
    ok = sum(v for k, v in status.items() if k.startswith("2"))
    return {
        "p50": pct.get("p50", 0) * 1e6,
        "p99": pct.get("p99", 0) * 1e6,
        "p999": pct.get("p99.9", 0) * 1e6,
        "rps": summary.get("requestsPerSec", 0),
        "requests": sum(status.values()),
        "ok": ok,
        "success_rate": summary.get("successRate", 0),
    }


# ----------------------------------------------------------------------------------------------
# servers


class Proc:
    def __init__(self, name, cmd, port, cwd, env=None):
        self.name = name
        self.port = port
        self.log_path = os.path.join(cwd, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen(["taskset", "-c", PROXY_CORE, *cmd], cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                  env=env, start_new_session=True)
        try:
            wait_port(port, proc=self.p)
        except RuntimeError as e:
            self.stop()
            with open(self.log_path) as f:
                raise RuntimeError(f"{name}: {e}\n{f.read()[-2000:]}")

    @property
    def pid(self):
        return self.p.pid

    def rss(self):
        return proc_status(self.pid, "VmRSS")

    def hwm(self):
        return proc_status(self.pid, "VmHWM")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def nginx_upstream_conf(d, port):
    return f"""
worker_processes 1;
master_process off;
daemon off;
pid {d}/upstream.pid;
error_log {d}/upstream-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  open_file_cache max=16 inactive=600s;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  client_body_temp_path {d}/tmp/up-body;
  proxy_temp_path {d}/tmp/up-proxy;
  fastcgi_temp_path {d}/tmp/up-fcgi;
  uwsgi_temp_path {d}/tmp/up-uwsgi;
  scgi_temp_path {d}/tmp/up-scgi;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /2b {{ default_type text/plain; return 200 "ok"; }}
    location = /16k {{ default_type application/octet-stream; alias {d}/www/16k; }}
  }}
}}
"""


def nginx_proxy_conf(d, port, upstream, connections):
    # worker_connections is preallocated (about 0.5 KiB each): size it for the test at hand.
    return f"""
worker_processes 1;
master_process off;
daemon off;
pid {d}/nginx-proxy.pid;
error_log {d}/nginx-proxy-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  client_body_temp_path {d}/tmp/px-body;
  proxy_temp_path {d}/tmp/px-proxy;
  fastcgi_temp_path {d}/tmp/px-fcgi;
  uwsgi_temp_path {d}/tmp/px-uwsgi;
  scgi_temp_path {d}/tmp/px-scgi;
  upstream up {{
    server 127.0.0.1:{upstream};
    keepalive 64;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def haproxy_conf(port, upstream):
    # haproxy needs about two descriptors per connection and refuses to start without them.
    maxconn = max(min(20000, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200) // 2), 256)
    return f"""
global
  nbthread 1
  maxconn {maxconn}
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 600s
  timeout server 600s
  timeout http-keep-alive 600s
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server up 127.0.0.1:{upstream}
"""


def keel_conf(port, admin, metrics, upstream, dead, stuck):
    # Metrics, trace propagation, breaker and bulkhead on (they always are; set explicitly here
    # at their defaults), access log off, one worker thread.
    return f"""
[runtime]
worker_threads = 1

[admin]
listen = "127.0.0.1:{admin}"

[metrics]
listen = "127.0.0.1:{metrics}"

[tracing]
propagation = ["tracecontext", "b3"]
sample_ratio = 0.1

[log]
level = "warn"

[shutdown]
grace_period = "2s"

[[listeners]]
name = "bench"
listen = "127.0.0.1:{port}"
max_connections = 20000
idle_timeout = "10m"
access_log = false

  # Breaker-open rejections: the endpoint refuses connections, one failure opens the breaker.
  [[listeners.routes]]
  name = "open"
  match = {{ path_prefix = "/open" }}
  upstream = "dead"

  # Bulkhead-full rejections: one slot, no queue, held by a request that never gets an answer.
  [[listeners.routes]]
  name = "full"
  match = {{ path_prefix = "/full" }}
  upstream = "stuck"
  timeout = "1h"

  [[listeners.routes]]
  name = "up"
  upstream = "nginx"

[upstreams.nginx]
endpoints = ["127.0.0.1:{upstream}"]
  [upstreams.nginx.pool]
  max_connections = 256
  max_requests = 256
  max_pending = 128
  queue_timeout = "1s"
  idle_timeout = "60s"
  [upstreams.nginx.breaker]
  consecutive_failures = 5
  failure_rate = 0.5
  window = "10s"
  min_requests = 20

[upstreams.dead]
endpoints = ["127.0.0.1:{dead}"]
  [upstreams.dead.breaker]
  consecutive_failures = 1
  open_for = "1h"
  max_open_for = "1h"

[upstreams.stuck]
endpoints = ["127.0.0.1:{stuck}"]
  [upstreams.stuck.pool]
  max_requests = 1
  max_pending = 0
"""


class Bench:
    def __init__(self, args, keel_bin, oha):
        self.args = args
        self.keel_bin = keel_bin
        # Other keel binaries to compare in the same run, as configurations "keel@NAME".
        self.variants = {f"keel@{k}": os.path.abspath(v) for k, v in (x.split("=", 1) for x in (args.keel_variants or "").split(",") if x)}
        self.oha = oha
        self.oha_flags = oha_flags(oha) if oha else None
        self.dir = tempfile.mkdtemp(prefix="keel-bench-")
        os.makedirs(os.path.join(self.dir, "www"))
        for t in ("up-body", "up-proxy", "up-fcgi", "up-uwsgi", "up-scgi", "px-body", "px-proxy", "px-fcgi", "px-uwsgi", "px-scgi"):
            os.makedirs(os.path.join(self.dir, "tmp", t))
        with open(os.path.join(self.dir, "www", "16k"), "wb") as f:
            f.write(bytes((i * 7 + 13) % 251 for i in range(16384)))
        self.lua = os.path.join(self.dir, "report.lua")
        with open(self.lua, "w") as f:
            f.write(WRK_LUA)
        self.upstream_port = free_port()
        conf = os.path.join(self.dir, "upstream.conf")
        with open(conf, "w") as f:
            f.write(nginx_upstream_conf(self.dir, self.upstream_port))
        self.upstream = Proc("upstream", ["nginx", "-p", self.dir, "-e", f"{self.dir}/upstream-error.log", "-c", conf],
                             self.upstream_port, self.dir)
        # A port nothing listens on (breaker-open upstream) and one that accepts into its
        # backlog and never answers (bulkhead-full upstream).
        self.dead_port = free_port()
        self.stuck = socket.socket()
        self.stuck.bind(("127.0.0.1", 0))
        self.stuck.listen(64)
        self.stuck_port = self.stuck.getsockname()[1]
        self.holders = []

    def close(self):
        self.upstream.stop()
        self.stuck.close()
        for h in self.holders:
            h.close()
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            log(f"bench: files kept in {self.dir}")

    def start(self, config, connections=1024):
        """Starts a proxy pinned to the proxy core; `connections` is the client connections it
        must hold (nginx preallocates them)."""
        port = free_port()
        if config == "direct":
            return None, self.upstream_port
        if config == "keel" or config.startswith("keel@"):
            binary = self.variants.get(config, self.keel_bin)
            admin, metrics = free_port(), free_port()
            path = os.path.join(self.dir, "keel.toml")
            with open(path, "w") as f:
                f.write(keel_conf(port, admin, metrics, self.upstream_port, self.dead_port, self.stuck_port))
            env = dict(os.environ)
            env.pop("RUST_LOG", None)
            return Proc("keel", [binary, "run", "--config", path], port, self.dir, env=env), port
        if config == "nginx":
            path = os.path.join(self.dir, "nginx-proxy.conf")
            with open(path, "w") as f:
                f.write(nginx_proxy_conf(self.dir, port, self.upstream_port, connections + 256))
            return Proc("nginx", ["nginx", "-p", self.dir, "-e", f"{self.dir}/nginx-proxy-error.log", "-c", path], port, self.dir), port
        if config == "haproxy":
            path = os.path.join(self.dir, "haproxy.cfg")
            with open(path, "w") as f:
                f.write(haproxy_conf(port, self.upstream_port))
            return Proc("haproxy", ["haproxy", "-db", "-f", path], port, self.dir), port
        raise ValueError(config)

    def window(self, proxy):
        pids = {"upstream": self.upstream.pid, "proxy": proxy.pid if proxy else None}
        return Window(pids, exclude=[])

    def measure(self, config, body):
        """One run of one configuration with one body: saturation, latency, memory."""
        a = self.args
        path = BODIES[body]
        proxy, port = self.start(config)
        try:
            status, _, payload = http_get(port, path)
            expected = 2 if body == "2B" else 16384
            if status != 200 or len(payload) != expected:
                raise RuntimeError(f"{config}: GET {path} gave {status} with {len(payload)} bytes, expected 200 with {expected}")
            wrk(port, path, a.warmup, a.connections, self.lua)
            res = {"config": config, "body": body}
            c0 = children_cpu()
            with self.window(proxy) as w:
                sat = wrk(port, path, a.duration, a.connections, self.lua)
            loadgen = children_cpu() - c0
            res["saturation"] = self.cpu_result(sat, w, proxy)
            res["saturation"]["loadgen_cpu_s"] = round(loadgen, 3)
            if self.oha:
                with self.window(proxy) as w:
                    lat = oha_run(self.oha, self.oha_flags, port, path, a.duration, a.rate, a.oha_connections)
                res["latency"] = self.cpu_result(lat, w, proxy)
            if proxy:
                res["peak_rss"] = proxy.hwm()
            if config.startswith("keel") and body == "2B" and not a.no_rejections:
                res["rejections"] = self.rejections(proxy, port)
            return res
        finally:
            if proxy:
                proxy.stop()

    def cpu_result(self, load, w, proxy):
        n = max(load["requests"], 1)
        out = dict(load)
        out["upstream_cpu_us"] = w.cpu["upstream"] * 1e6 / n
        out["upstream_sys_us"] = w.sys["upstream"] * 1e6 / n
        if proxy:
            out["proxy_cpu_us"] = w.cpu["proxy"] * 1e6 / n
            out["proxy_sys_us"] = w.sys["proxy"] * 1e6 / n
            out["proxy_over_upstream"] = out["proxy_cpu_us"] / max(out["upstream_cpu_us"], 1e-9)
        out["window"] = w.summary()
        return out

    def rejections(self, proxy, port):
        """keel's CPU per request for breaker-open and bulkhead-full rejections (2-byte body run)."""
        a = self.args
        out = {}
        # The first call fails to connect and opens the breaker; the rest are circuit-open.
        http_get(port, "/open")
        status, headers, _ = http_get(port, "/open")
        if status != 503 or headers.get("keel-error") != "circuit-open":
            raise RuntimeError(f"breaker did not open: {status} {headers}")
        # One request takes the only slot and waits forever; the rest are bulkhead-full.
        holder = socket.create_connection(("127.0.0.1", port))
        holder.sendall(b"GET /full HTTP/1.1\r\nhost: bench\r\n\r\n")
        self.holders.append(holder)
        deadline = time.monotonic() + 5
        while True:
            status, headers, _ = http_get(port, "/full")
            if status == 503 and headers.get("keel-error") == "bulkhead-full":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"bulkhead did not fill: {status} {headers}")
            time.sleep(0.05)
        for name, path in (("circuit_open", "/open"), ("bulkhead_full", "/full")):
            wrk(port, path, 1, a.connections, self.lua)
            with self.window(proxy) as w:
                r = wrk(port, path, max(a.duration // 2, 2), a.connections, self.lua)
            out[name] = {
                "rps": r["rps"],
                "requests": r["requests"],
                "non_2xx": r["status"],
                "proxy_cpu_us": w.cpu["proxy"] * 1e6 / max(r["requests"], 1),
                "window": w.summary(),
            }
        holder.close()
        self.holders.remove(holder)
        return out

    def memory(self):
        """Idle RSS and RSS with N idle keep-alive client connections, per proxy."""
        a = self.args
        out = {}
        for config in [c for c in self.args.memory_configs if c == "keel" or c.startswith("keel@") or c in ("nginx", "haproxy")]:
            proxy, port = self.start(config, connections=a.idle_connections)
            try:
                time.sleep(1.0)
                idle = proxy.rss()
                for _ in range(20):
                    http_get(port, "/2b")
                base = proxy.rss()
                client = subprocess.Popen(
                    ["taskset", "-c", LOAD_CORE, sys.executable, os.path.abspath(__file__), "--hold-client",
                     str(port), str(a.idle_connections)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                try:
                    line = read_line(client.stdout, 120)
                    if not line.startswith("READY"):
                        raise RuntimeError(f"idle client: {line} {client.stderr.read()[:2000]}")
                    opened = int(line.split()[1])
                    time.sleep(1.0)
                    held = proxy.rss()
                    hwm = proxy.hwm()
                finally:
                    client.stdin.close()
                    try:
                        client.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        client.kill()
                out[config] = {
                    "idle_rss": idle,
                    "rss_after_warmup": base,
                    "rss_with_connections": held,
                    "hwm": hwm,
                    "connections": opened,
                    "bytes_per_connection": (held - base) / max(opened, 1),
                }
                log(f"bench: memory {config}: idle {idle / 2**20:.1f} MiB, {opened} connections "
                    f"{held / 2**20:.1f} MiB, {(held - base) / max(opened, 1):.0f} B/connection")
            finally:
                proxy.stop()
        return out


def read_line(stream, timeout):
    result = []

    def reader():
        result.append(stream.readline())

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    if not result:
        raise RuntimeError(f"no answer within {timeout}s")
    return result[0].strip()


# ----------------------------------------------------------------------------------------------
# idle client (run as a subprocess: python3 bench/run.py --hold-client PORT N)


def hold_client(port, n):
    raise_nofile(n + 1024)

    async def one(sem, conns):
        async with sem:
            for attempt in range(5):
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
                    writer.write(b"GET /2b HTTP/1.1\r\nhost: bench\r\n\r\n")
                    await writer.drain()
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    await asyncio.wait_for(reader.readexactly(length), 10)
                    conns.append(writer)
                    return
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                    await asyncio.sleep(0.1 * (attempt + 1))

    async def main():
        sem = asyncio.Semaphore(256)
        conns = []
        await asyncio.wait_for(asyncio.gather(*(one(sem, conns) for _ in range(n))), 100)
        print(f"READY {len(conns)}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for w in conns:
            w.close()

    asyncio.run(main())


# ----------------------------------------------------------------------------------------------
# report


def med(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def fmt(m, unit="", digits=0, scale=1.0):
    if m is None:
        return "–"
    mid, lo, hi = (x * scale for x in m)
    f = f"{{:,.{digits}f}}"
    if len(set((round(lo, digits), round(hi, digits)))) == 1:
        return f"{f.format(mid)}{unit}"
    return f"{f.format(mid)}{unit} ({f.format(lo)}–{f.format(hi)})"


def report(results, memory, meta):
    lines = []
    runs = results
    disturbed = [r for r in runs if r["saturation"]["window"]["disturbed"] or r.get("latency", {}).get("window", {}).get("disturbed")]
    lines.append(f"keel benchmark, {meta['date']}: {meta['machine']}; {meta['reps']} repetition(s), "
                 f"wrk {meta['duration']} s × {meta['connections']} connections"
                 + (f", oha -q {meta['rate']} --latency-correction {meta['duration']} s × {meta['oha_connections']} connections" if meta["oha"] else ", no oha (latency from wrk at saturation)")
                 + ". Medians (min–max).")
    lines.append("")
    for body in BODIES:
        rs = [r for r in runs if r["body"] == body]
        direct = [r for r in rs if r["config"] == "direct"]
        direct_rps = {r["rep"]: r["saturation"]["rps"] for r in direct}
        direct_lat = {r["rep"]: r.get("latency") for r in direct}
        lines.append(f"**{body} body**")
        lines.append("")
        lat_src = "fixed rate" if meta["oha"] else "wrk, saturation"
        lines.append(f"| config | req/s (× direct) | proxy CPU µs/req | proxy ÷ upstream CPU | upstream CPU µs/req | p50 µs ({lat_src}) | p99 µs | p99.9 µs | added p50 | added p99 | peak RSS MiB |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        splits = []
        for config in meta["configs"]:
            cr = [r for r in rs if r["config"] == config]
            if not cr:
                continue
            rps = med([r["saturation"]["rps"] for r in cr])
            ratio = med([r["saturation"]["rps"] / direct_rps[r["rep"]] for r in cr if r["rep"] in direct_rps])
            pcpu = med([r["saturation"].get("proxy_cpu_us") for r in cr])
            pou = med([r["saturation"].get("proxy_over_upstream") for r in cr])
            ucpu = med([r["saturation"]["upstream_cpu_us"] for r in cr])

            def lat(r):
                return r.get("latency") or r["saturation"]

            p50 = med([lat(r)["p50"] for r in cr])
            p99 = med([lat(r)["p99"] for r in cr])
            p999 = med([lat(r)["p999"] for r in cr])
            if config == "direct":
                add50 = add99 = None
            else:
                add50 = med([lat(r)["p50"] - (direct_lat[r["rep"]] or direct[0]["saturation"])["p50"] for r in cr if r["rep"] in direct_lat])
                add99 = med([lat(r)["p99"] - (direct_lat[r["rep"]] or direct[0]["saturation"])["p99"] for r in cr if r["rep"] in direct_lat])
            rss = med([r.get("peak_rss") for r in cr])
            flag = " †" if any(r in disturbed for r in cr) else ""
            ratio_s = f"{fmt(rps)} ({fmt(ratio, digits=3)})" if rps else "–"
            splits.append((config, med([r["saturation"].get("proxy_cpu_us", 0) - r["saturation"].get("proxy_sys_us", 0) for r in cr]) if config != "direct" else None,
                           med([r["saturation"].get("proxy_sys_us") for r in cr]) if config != "direct" else None,
                           med([r["saturation"]["upstream_cpu_us"] - r["saturation"]["upstream_sys_us"] for r in cr if "upstream_sys_us" in r["saturation"]]),
                           med([r["saturation"].get("upstream_sys_us") for r in cr])))
            lines.append(
                f"| {config}{flag} | {ratio_s} | {fmt(pcpu, digits=1)} | {fmt(pou, digits=2, unit='×')} | {fmt(ucpu, digits=1)} | "
                f"{fmt(p50)} | {fmt(p99)} | {fmt(p999)} | {fmt(add50, unit=' µs') if add50 else '–'} | "
                f"{fmt(add99, unit=' µs') if add99 else '–'} | {fmt(rss, digits=1, scale=1 / 2**20) if rss else '–'} |")
        lines.append("")
        lines.append(f"CPU per request at saturation ({body}), user and kernel (system) time:")
        lines.append("")
        lines.append("| config | proxy user µs/req | proxy system µs/req | upstream user µs/req | upstream system µs/req |")
        lines.append("|---|---|---|---|---|")
        for config, pu, ps, uu, us in splits:
            lines.append(f"| {config} | {fmt(pu, digits=1)} | {fmt(ps, digits=1)} | {fmt(uu, digits=1)} | {fmt(us, digits=1)} |")
        lines.append("")
    rej = [r for r in runs if r.get("rejections")]
    if rej:
        lines.append("**keel rejections** (2B runs; CPU per request as seen by the process, HTTP parsing and writing the 503 included)")
        lines.append("")
        lines.append("| what | req/s | keel CPU µs/req | forwarded ÷ rejected CPU |")
        lines.append("|---|---|---|---|")
        fwd = {r["rep"]: r["saturation"]["proxy_cpu_us"] for r in rej}
        lines.append(f"| forwarded (2B) | {fmt(med([r['saturation']['rps'] for r in rej]))} | {fmt(med(list(fwd.values())), digits=1)} | 1 |")
        for name in ("circuit_open", "bulkhead_full"):
            vals = [r["rejections"][name] for r in rej]
            ratio = med([fwd[r["rep"]] / r["rejections"][name]["proxy_cpu_us"] for r in rej])
            lines.append(f"| {name.replace('_', '-')} | {fmt(med([v['rps'] for v in vals]))} | {fmt(med([v['proxy_cpu_us'] for v in vals]), digits=1)} | {fmt(ratio, digits=1, unit='×')} |")
        lines.append("")
    if memory:
        lines.append(f"**Memory** (VmRSS; idle = just started; then {meta['idle_connections']:,} idle keep-alive client connections, each after one request)")
        lines.append("")
        lines.append("| proxy | idle RSS MiB | RSS after 20 requests MiB | RSS with connections MiB | connections open | bytes per connection |")
        lines.append("|---|---|---|---|---|---|")
        for config, m in memory.items():
            lines.append(f"| {config} | {m['idle_rss'] / 2**20:.1f} | {m['rss_after_warmup'] / 2**20:.1f} | {m['rss_with_connections'] / 2**20:.1f} | {m['connections']:,} | {m['bytes_per_connection']:,.0f} |")
        lines.append("")
    total_phases = sum(1 + ("latency" in r) for r in runs)
    lines.append(f"Disturbed runs (other processes above {OTHER_LIMIT:.0%} of a core, or steal above {STEAL_LIMIT:.0%}): "
                 f"{len(disturbed)} of {len(runs)} runs ({total_phases} measured phases)"
                 + ("; marked †: " + ", ".join(f"rep {r['rep']} {r['config']} {r['body']}" for r in disturbed) if disturbed else "") + ".")
    return "\n".join(lines)


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}, Linux {platform.release()}"


def versions(keel_bin, oha):
    out = {}
    for name, cmd in (("nginx", ["nginx", "-v"]), ("haproxy", ["haproxy", "-v"]), ("wrk", ["wrk", "-v"]),
                      ("keel", [keel_bin, "--version"]), ("oha", [oha, "--version"] if oha else None)):
        if not cmd:
            continue
        r = subprocess.run(cmd, capture_output=True, text=True)
        text = (r.stdout + r.stderr).strip().splitlines()
        out[name] = text[0] if text else "?"
    return out


def profile(args, keel_bin):
    """Profiles keel alone under load: where its CPU goes per request."""
    raise_nofile(65536)
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    bench = Bench(args, keel_bin, None)
    out = args.out or os.path.join(bench.dir, "profile.txt")
    path = BODIES[args.profile]
    try:
        if args.callgrind:
            if not have("valgrind"):
                sys.exit("bench: --callgrind needs valgrind (apt-get install valgrind)")
            cg = os.path.join(bench.dir, "callgrind.out")
            real = bench.keel_bin
            bench.keel_bin = "valgrind"
            # valgrind in front of keel: Proc runs `valgrind ... keel run --config ...`.
            proxy, port = None, free_port()
            admin, metrics = free_port(), free_port()
            conf = os.path.join(bench.dir, "keel.toml")
            with open(conf, "w") as f:
                f.write(keel_conf(port, admin, metrics, bench.upstream_port, bench.dead_port, bench.stuck_port))
            proxy = Proc("keel", ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}", "--instr-atstart=no",
                                  real, "run", "--config", conf], port, bench.dir)
            bench.keel_bin = real
            try:
                http_get(port, path, timeout=30)
                subprocess.run(["callgrind_control", "-i", "on", str(proxy.pid)], check=True, capture_output=True)
                n = args.callgrind
                conns = 8
                # wrk cannot stop after N requests; a small Python client sends exactly N.
                t = time.monotonic()
                asyncio.run(fixed_requests(port, path, n, conns))
                log(f"bench: {n} requests under callgrind in {time.monotonic() - t:.1f} s")
                subprocess.run(["callgrind_control", "-i", "off", str(proxy.pid)], check=True, capture_output=True)
            finally:
                proxy.stop()
            report_text = subprocess.run(["callgrind_annotate", "--inclusive=no", cg], capture_output=True, text=True).stdout
            incl = subprocess.run(["callgrind_annotate", "--inclusive=yes", cg], capture_output=True, text=True).stdout
            with open(out, "w") as f:
                f.write(f"callgrind, {args.callgrind} requests, body {args.profile}\n\n== self ==\n{report_text}\n\n== inclusive ==\n{incl}")
            shutil.copy(cg, os.path.splitext(out)[0] + ".callgrind")
        else:
            if not have("perf"):
                sys.exit("bench: --profile needs perf (apt-get install linux-perf)")
            proxy, port = bench.start("keel")
            try:
                wrk(port, path, 2, args.connections, bench.lua)
                data = os.path.join(bench.dir, "perf.data")
                rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "2999", "-g", "-p", str(proxy.pid), "-o", data],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                with bench.window(proxy) as w:
                    r = wrk(port, path, args.duration, args.connections, bench.lua)
                rec.send_signal(signal.SIGINT)
                rec.wait(timeout=60)
                log(f"bench: {r['rps']:,.0f} req/s, keel {w.cpu['proxy'] * 1e6 / r['requests']:.1f} µs/req (perf attached)")
            finally:
                proxy.stop()
            flat = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "symbol", "-g", "none",
                                   "--percent-limit", "0.3"], capture_output=True, text=True).stdout
            dso = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso", "-g", "none"],
                                 capture_output=True, text=True).stdout
            children = subprocess.run(["perf", "report", "-i", data, "--stdio", "--children", "--sort", "symbol", "-g", "none",
                                       "--percent-limit", "2"], capture_output=True, text=True).stdout
            with open(out, "w") as f:
                f.write(f"perf record -e cpu-clock, body {args.profile}, {r['rps']:,.0f} req/s\n\n== by dso ==\n{dso}\n== self ==\n{flat}\n== inclusive ==\n{children}")
        log(f"bench: profile written to {out}")
    finally:
        bench.close()


async def fixed_requests(port, path, n, conns):
    """Sends exactly n keep-alive GETs over `conns` connections."""
    left = [n]

    async def worker():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while left[0] > 0:
            left[0] -= 1
            writer.write(f"GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
        writer.close()

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(conns))), 600)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured wrk or oha phase (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured wrk load before each run (default 2)")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    ap.add_argument("--rate", type=int, default=5000, help="oha fixed rate, requests/s (default 5000)")
    ap.add_argument("--oha-connections", type=int, default=16, help="oha connections (default 16)")
    ap.add_argument("--idle-connections", type=int, default=10000, help="idle client connections for the memory figure (default 10000)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of direct,keel,nginx,haproxy")
    ap.add_argument("--bodies", default=",".join(BODIES), help="comma-separated subset of 2B,16KiB")
    ap.add_argument("--no-oha", action="store_true", help="skip the fixed-rate latency part (report wrk's latency at saturation)")
    ap.add_argument("--no-memory", action="store_true", help="skip the idle-connection memory part")
    ap.add_argument("--no-rejections", action="store_true", help="skip the keel rejection CPU part")
    ap.add_argument("--quick", action="store_true", help="1 repetition of 3 s phases, 2,000 idle connections: to try the setup")
    ap.add_argument("--keel-bin", help="use this keel binary instead of building one")
    ap.add_argument("--keel-variants", metavar="NAME=PATH,...", help="also measure these keel binaries, as configurations keel@NAME (A/B of builds in one run)")
    ap.add_argument("--out", help="write the markdown report here (default bench/results/DATE.md) and the raw numbers beside it as .json")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory with configs and logs")
    ap.add_argument("--profile", metavar="BODY", help="instead of the benchmark: profile keel under wrk load with this body (2B or 16KiB) "
                    "using `perf record` (software clock), or callgrind with --callgrind; writes the report to --out")
    ap.add_argument("--callgrind", type=int, metavar="N", help="with --profile: run keel under valgrind --tool=callgrind for N requests")
    ap.add_argument("--hold-client", nargs=2, metavar=("PORT", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    # The servers run in their own sessions (so a Ctrl-C reaches only the harness): on SIGTERM or
    # SIGHUP, unwind through the `finally` blocks that stop them instead of dying at once.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    if args.hold_client:
        hold_client(int(args.hold_client[0]), int(args.hold_client[1]))
        return
    if args.quick:
        args.reps, args.duration, args.warmup, args.idle_connections = 1, 3, 1, 2000
    configs = [c for c in args.configs.split(",") if c]
    bodies = [b for b in args.bodies.split(",") if b]
    if "direct" not in configs:
        configs.insert(0, "direct")
    for item in (args.keel_variants or "").split(","):
        if item:
            configs.append("keel@" + item.split("=", 1)[0])
    if os.cpu_count() < 2:
        sys.exit("bench: needs at least 2 CPUs (proxy and upstream on core 0, load generator on core 1)")

    ensure_packages()
    if args.profile:
        profile(args, build_keel(args))
        return
    oha = ensure_oha(args)
    keel_bin = build_keel(args)
    nofile = raise_nofile(65536)
    if nofile < args.idle_connections + 1024:
        log(f"bench: open-file limit is {nofile}; the memory part uses {nofile - 1024} connections")
        args.idle_connections = max(nofile - 1024, 100)
    host = machine()
    # The harness itself stays off the proxy core.
    os.sched_setaffinity(0, {int(LOAD_CORE)})

    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": host,
        "command": " ".join(["python3", "bench/run.py", *sys.argv[1:]]),
        "reps": args.reps, "duration": args.duration, "connections": args.connections,
        "rate": args.rate, "oha_connections": args.oha_connections, "oha": bool(oha),
        "idle_connections": args.idle_connections,
        "configs": configs,
        "versions": versions(keel_bin, oha),
        "loadavg_start": os.getloadavg(),
    }
    log(f"bench: {meta['machine']}; load average {meta['loadavg_start'][0]:.2f}")
    per_run = args.warmup + args.duration * (2 if oha else 1) + 2
    total = args.reps * len(bodies) * len(configs) * per_run + (args.reps * (args.duration + 4) if "keel" in configs else 0)
    log(f"bench: about {total // 60 + 1} minutes of measurements")
    args.memory_configs = [c for c in configs if c != "direct"]
    bench = Bench(args, keel_bin, oha)
    results = []
    memory = {}
    try:
        for rep in range(args.reps):
            for b_i, body in enumerate(bodies):
                k = (rep + b_i) % len(configs)
                order = configs[k:] + configs[:k]
                for config in order:
                    t = time.monotonic()
                    r = bench.measure(config, body)
                    r["rep"] = rep
                    results.append(r)
                    s = r["saturation"]
                    log(f"bench: rep {rep + 1}/{args.reps} {body:>5} {config:<8} {s['rps']:>9,.0f} req/s"
                        + (f"  proxy {s['proxy_cpu_us']:5.1f} µs/req" if "proxy_cpu_us" in s else "")
                        + f"  upstream {s['upstream_cpu_us']:5.1f} µs/req"
                        + (f"  p50 {r['latency']['p50']:.0f} µs p99 {r['latency']['p99']:.0f} µs" if "latency" in r else "")
                        + ("  DISTURBED" if s["window"]["disturbed"] or r.get("latency", {}).get("window", {}).get("disturbed") else "")
                        + f"  ({time.monotonic() - t:.0f} s)")
        if not args.no_memory:
            memory = bench.memory()
    finally:
        bench.close()
    text = report(results, memory, meta)
    text += f"\n\nCommand: `{meta['command']}`. Versions: " + "; ".join(f"{k} {v}" for k, v in meta["versions"].items()) + "."
    print(text)
    out = args.out or os.path.join(REPO, "bench", "results", datetime.datetime.now().strftime("%Y-%m-%d-%H%M") + ".md")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text + "\n")
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump({"meta": meta, "runs": results, "memory": memory}, f, indent=1)
    log(f"bench: report written to {out}")


if __name__ == "__main__":
    main()
