#!/usr/bin/env python3
"""bench/start_ready.py - start-to-ready time and idle RSS of the gateway (used by bench/run.sh).

Starts the gateway RUNS times. For each start: the clock starts just before the process is spawned; /readyz is
polled every INTERVAL seconds (a fresh connection each time) until it answers 200; that elapsed time is the
start-to-ready time. Then the gateway is left idle for IDLE seconds and its RSS is read (`ps -o rss=`, the same
figure as VmRSS), before any load. It is then stopped with SIGTERM (SIGKILL after 10 s), by PID.

    start_ready.py --bin BIN --config CFG --url http://127.0.0.1:18090/readyz [--runs 5] [--interval 0.005]
                   [--idle 1.0] [--pin CPU] [--log FILE] [--label NAME] [--json OUT]

Prints one line per start and a summary line (median of the runs), and writes them as JSON to --json.
"""

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse


def ready(host, port, path, timeout=0.5):
    try:
        c = http.client.HTTPConnection(host, port, timeout=timeout)
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        c.close()
        return r.status == 200
    except OSError:
        return False


def rss_kb(pid):
    out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return int(out) if out else 0


def status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def threads(pid):
    return status_kb(pid, "Threads")


def stop(p):
    if p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--interval", type=float, default=0.005)
    ap.add_argument("--idle", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--pin", default="")
    ap.add_argument("--log", default=os.devnull)
    ap.add_argument("--label", default="start")
    ap.add_argument("--json", default="")
    a = ap.parse_args()

    u = urllib.parse.urlparse(a.url)
    cmd = [a.bin, "serve", "--config", a.config]
    if a.pin:
        cmd = ["taskset", "-c", a.pin] + cmd
    if ready(u.hostname, u.port, u.path):
        sys.exit(f"something already answers {a.url}; stop it first")

    runs = []
    with open(a.log, "ab") as log:
        for i in range(a.runs):
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            try:
                polls = 0
                while True:
                    polls += 1
                    if ready(u.hostname, u.port, u.path):
                        elapsed = time.perf_counter() - t0
                        break
                    if p.poll() is not None:
                        sys.exit(f"gateway exited with {p.returncode} before it was ready (see {a.log})")
                    if time.perf_counter() - t0 > a.timeout:
                        sys.exit(f"gateway not ready after {a.timeout} s (see {a.log})")
                    time.sleep(a.interval)
                time.sleep(a.idle)
                r = dict(run=i + 1, ready_ms=round(elapsed * 1000, 1), polls=polls, rss_kb=rss_kb(p.pid),
                         hwm_kb=status_kb(p.pid, "VmHWM"), threads=threads(p.pid))
            finally:
                stop(p)
            runs.append(r)
            print(f"[{a.label}] run {r['run']}: ready after {r['ready_ms']} ms ({r['polls']} polls), "
                  f"idle RSS {r['rss_kb'] / 1024:.1f} MiB (peak so far {r['hwm_kb'] / 1024:.1f} MiB), "
                  f"{r['threads']} threads", file=sys.stderr)
            time.sleep(0.2)

    ms = [r["ready_ms"] for r in runs]
    rss = [r["rss_kb"] for r in runs]
    summary = dict(label=a.label, runs=runs, ready_ms_median=statistics.median(ms), ready_ms_min=min(ms),
                   ready_ms_max=max(ms), idle_rss_kb_median=statistics.median(rss), idle_rss_kb_max=max(rss))
    print(f"[{a.label}] start-to-ready median {summary['ready_ms_median']} ms (min {min(ms)}, max {max(ms)}); "
          f"idle RSS median {summary['idle_rss_kb_median'] / 1024:.1f} MiB (max {max(rss) / 1024:.1f})",
          file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
