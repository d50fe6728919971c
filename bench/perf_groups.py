#!/usr/bin/env python3
"""bench/perf_groups.py - where the gateway's CPU goes, by part of the request path, from a `perf script` dump.

    perf record -F 2999 -g -p <gateway pid> -o perf.data -- sleep 10     # while wrk drives the gateway
    perf script -i perf.data -F comm,tid,period,ip,sym,dso > perf.script
    python3 bench/perf_groups.py perf.script [--us-per-req US] [--top 25]

Each sample goes to one group: walking its call chain from the leaf towards the root, the first frame that
matches a group's pattern decides (except for the ANCHORS, which win wherever they are on the stack) (so malloc, memcpy and syscalls count for the code that called them, and
SQLite's C internals for the ledger call that ran them). glibc has no frame pointers, so a chain through
send()/malloc() is often cut there: those samples land in "other". "self" is that partition (sums to 100 %); "incl." is the
share of samples with any frame of the group on the stack (groups nest, so these overlap). With --us-per-req (the
gateway's own CPU time per request, e.g. the "own CPU us/req" column of bench/run.sh) the self shares are also
given in microseconds per request.
Also prints the top symbols by self samples, and by inclusive samples for the gateway's own functions.
"""

import argparse
import collections
import re

GROUPS = [
    ("JWT verify (jsonwebtoken, p256/ecdsa, rsa, claims)",
     r"jsonwebtoken::|p256::|p384::|primeorder::|ecdsa::|elliptic_curve::|rsa::|num_bigint|crypto_bigint|"
     r"ed25519|hmac::|vidu_gateway::auth::"),
    ("SQLite ledger (INSERT/UPDATE, WAL, locks)", r"rusqlite::|vidu_gateway::state::ledger"),
    ("admission store (lock, slots, budgets, GCRA)", r"vidu_gateway::state::|governor::"),
    ("policy (rules, periods, off-peak, buckets)", r"vidu_gateway::policy::|vidu_gateway::admit::|jiff::"),
    ("validation (JSON parse, field rules, image header)", r"vidu_gateway::validate::|"
     r"validator::|url::|imagesize::"),
    ("body read (copy into one buffer)", r"vidu_gateway::read::|img2video::read_authenticated"),
    ("awc upstream call (client, pool, h1 out)", r"awc::|actix_http::client|vidu_gateway::forward::client|"
     r"vidu_gateway::forward::upstream|actix_tls::"),
    ("metrics (prometheus-client)", r"prometheus_client::|vidu_gateway::metrics"),
    ("logging/tracing", r"^tracing|tracing_subscriber|tracing_actix_web|tracing_core|sharded_slab|"
     r"vidu_gateway::telemetry"),
    ("request id (uuid, getrandom)", r"uuid::|getrandom"),
    ("handler glue (create flow, settle parse, headers, envelope)", r"vidu_gateway::"),
    ("actix HTTP server (h1 codec, dispatcher, routing)", r"actix_http::|actix_web::|actix_server::|"
     r"actix_service::|actix_router::|actix_utils::"),
    ("runtime (tokio, mio, epoll, task wakeups)", r"tokio::|mio::|actix_rt::"),
]
# Checked first, anywhere on the stack: work done on behalf of these callers, whatever it calls (forward_body
# re-runs the same parser as validate, so leaf-first matching would count it as validation).
ANCHORS = [
    ("forward body (rewrite check: re-parse + copy)", r"Validated::forward_body|forward::rewrite::rewrite"),
]
GROUPS = ANCHORS + GROUPS
COMPILED = [(name, re.compile(p)) for name, p in GROUPS]
ANCHORED = COMPILED[:len(ANCHORS)]


def samples(path):
    head, frames = None, []
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                if head is not None:
                    yield head, frames
                head, frames = None, []
            elif line[0] not in " \t":
                head, frames = line.split(), []
            else:
                parts = line.strip().split(" ", 1)
                sym = parts[1] if len(parts) > 1 else "?"
                sym = re.sub(r" \(([^)]*)\)$", "", sym)
                frames.append(sym)
    if head is not None:
        yield head, frames


def group_of(frames):
    for name, rx in ANCHORED:
        if any(rx.search(fr) for fr in frames):
            return name
    for fr in frames:
        for name, rx in COMPILED:
            if rx.search(fr):
                return name
    return "other: socket I/O, malloc, scheduler with a cut call chain"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("script")
    ap.add_argument("--us-per-req", type=float, default=0.0)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()

    total = 0
    by_group = collections.Counter()
    incl = collections.Counter()
    self_sym = collections.Counter()
    incl_sym = collections.Counter()
    for head, frames in samples(a.script):
        w = int(head[2]) if len(head) > 2 and head[2].isdigit() else 1
        total += w
        by_group[group_of(frames)] += w
        seen = set()
        for name, rx in COMPILED:
            if any(rx.search(fr) for fr in frames):
                seen.add(name)
        for n in seen:
            incl[n] += w
        if frames:
            self_sym[frames[0]] += w
        for s in set(f for f in frames if f.startswith(("vidu_gateway::", "<vidu_gateway::"))):
            incl_sym[s] += w
    if not total:
        raise SystemExit("no samples")

    print(f"{total} sample weight in {a.script}")
    per = a.us_per_req
    print(f"\n  {'group':<58}   self  " + ("  us/req" if per else "") + "   incl.")
    for name, _ in GROUPS + [("other: socket I/O, malloc, scheduler with a cut call chain", None)]:
        share = by_group[name] / total
        print(f"  {name:<58} {share * 100:5.1f} %" + (f"  {share * per:6.1f}" if per else "")
              + f"  {incl.get(name, 0) / total * 100:5.1f} %")
    print(f"\ntop {a.top} symbols by self samples:")
    for s, n in self_sym.most_common(a.top):
        print(f"  {n / total * 100:5.1f} %  {s[:150]}")
    print(f"\ntop {a.top} gateway functions by inclusive samples:")
    for s, n in incl_sym.most_common(a.top):
        print(f"  {n / total * 100:5.1f} %  {s[:150]}")


if __name__ == "__main__":
    main()
