#!/usr/bin/env python3
"""bench/summary.py - one table from the harness runs of bench/run.sh, with the ratios and the performance bars.

    summary.py --run main=DIR [--run redis=DIR] [--run floor=DIR] [--run quote=DIR] [--run half=DIR]
               [--run half_floor=DIR] [--run mem16=DIR]
               [--start empty=JSON] [--start full=JSON] [--ledger-rows N] [--gateway NAME] [--delay-ms MS]

Each DIR is one results directory of ../shared/bench/bench.sh (runs.tsv, raw/*.txt, rss_end.txt). Figures are
medians over the repetitions (peak RSS: the maximum); p99.9 comes from the RESULT lines of bench/post.lua in the
raw wrk outputs. Kinds:
  main   small_c1, small_c16, small_c64, body15m_c4   (as the harness names them); targets direct, nginx,
         nginx_stream, nginx_membuf (15 MiB only), haproxy_jwt (with PEER_JWT_PUBKEY), gateway
  redis  small_cN, the gateway with state.backend = "redis" (harness target gateway_redis) -> small_cN/gateway_redis,
         compared with the main pass's gateway (memory backend); the pass's direct and nginx rows become
         small_cN@redis (a drift check, not in the main table); redis_info.txt (written by run.sh): redis-server's
         INFO commandstats/cpu/memory, key count and largest budget counter after the pass
  floor  small_cN and body15m_c4 with bench/floor.rs as the harness's gateway (target floor) -> small_cN/floor,
         body15m_c4/floor; the pass's direct and nginx rows become <scenario>@floor (drift check)
  quote  small_cN, the gateway target hitting POST /gateway/v1/img2video/quote  -> quote_cN
  half   small_cN with a think time per connection (DELAY_MS) -> small_half_cN: latency at ~half peak load
  half_floor  the same with the floor, at the same think time -> small_half_cN/floor; its direct and nginx rows
         become small_half_cN@half_floor (the floor's added latency is taken against this pass's direct)
  mem16  body15m_c16: 16 x 15 MiB requests in flight, for the memory bar
"""

import argparse
import csv
import glob
import json
import os
import re
import statistics as st
import sys

REFS = ["direct", "nginx", "nginx_stream", "nginx_membuf"]
PEER = "haproxy_jwt"         # the harness's HAProxy peer (PEER_JWT_PUBKEY): RS256 + exp + per-sub rate table
REDIS_GW = "gateway_redis"   # the harness's GATEWAY_NAME in the redis pass
FLOOR = "floor"              # the harness's GATEWAY_NAME in the floor and half_floor passes (bench/floor.rs)
MiB = 1024 * 1024


def read_run(kind, d, gw):
    rows = list(csv.DictReader(open(os.path.join(d, "runs.tsv")), delimiter="\t"))
    out = {}
    for r in rows:
        sc = r["scenario"]
        if kind == "quote":
            sc = sc.replace("small_", "quote_")
        elif kind in ("half", "half_floor"):
            sc = sc.replace("small_", "small_half_")
        if kind == "redis" and r["target"] != REDIS_GW:
            sc = sc + "@redis"
        elif kind in ("floor", "half_floor") and r["target"] != FLOOR:
            sc = sc + "@" + kind
        raw = os.path.join(d, "raw", f"{r['scenario']}.{r['target']}.r{r['rep']}.txt")
        extra = {}
        try:
            for line in open(raw):
                if line.startswith("RESULT"):
                    extra = dict(x.split("=", 1) for x in line.split()[1:])
        except OSError:
            pass
        r = dict(r, p999_us=extra.get("p999_us", "nan"), p9999_us=extra.get("p9999_us", "nan"),
                 err_status=extra.get("err_status", "0"), threads=thread_split(raw, int(r["requests"])))
        out.setdefault((sc, r["target"]), []).append(r)
    return out


def thread_split(raw, requests):
    """CPU per request of each thread name of the target process over one measurement (run.sh's staged harness
    writes every thread's name and utime+stime ticks before and after it), or {} when not recorded."""
    def ticks(path):
        out = {}
        for line in open(path):
            name, _, t = line.rstrip("\n").rpartition("\t")
            if name and t.isdigit():
                out[name] = out.get(name, 0) + int(t)
        return out
    try:
        a, b = ticks(raw + ".threads0"), ticks(raw + ".threads1")
    except OSError:
        return {}
    hz = os.sysconf("SC_CLK_TCK")
    return {n: (b[n] - a.get(n, 0)) / hz * 1e6 / max(requests, 1) for n in b}


def agg(rs):
    f = lambda k: [float(r[k]) for r in rs]
    med = st.median
    return dict(rps=med(f("rps")), rmin=min(f("rps")), rmax=max(f("rps")), p50=med(f("p50_us")),
                p99=med(f("p99_us")), p999=med(f("p999_us")), hwm=max(f("hwm_front_kb")) / 1024,
                front=med(f("front_cpu_us_req")), srv=med(f("srv_cpu_us_req")), err=int(sum(f("errors"))),
                err_status=int(sum(f("err_status"))), foreign=max(f("foreign_pct")), n=len(rs),
                requests=int(sum(f("requests"))), up=med(f("up_cpu_us_req")), busy=med(f("cpu_server_pct")),
                threads={n: med([r["threads"].get(n, 0.0) for r in rs])
                         for n in sorted({n for r in rs for n in r["threads"]})},
                # server CPU that is neither the target nor the mock: redis-server in the redis pass (plus the idle
                # nginx workers, ~0)
                other=med([float(r["srv_cpu_us_req"]) - float(r["front_cpu_us_req"]) - float(r["up_cpu_us_req"])
                           for r in rs]))


def ms(us):
    if us != us:  # nan
        return "-"
    return "%.3f" % (us / 1000) if us < 10000 else "%.1f" % (us / 1000)


def table(h, ls, right_from=2, group=True):
    w = [max([len(x)] + [len(l[i]) for l in ls]) for i, x in enumerate(h)]
    fmt = lambda l: "  ".join(x.rjust(w[i]) if i >= right_from else x.ljust(w[i]) for i, x in enumerate(l))
    out = [fmt(h), "  ".join("-" * x for x in w)]
    prev = None
    for l in ls:
        if group and prev is not None and l[0] != prev:
            out.append("")
        out.append(fmt(l))
        prev = l[0]
    return "\n".join(out)


def rss_end(d, gw):
    try:
        for line in open(os.path.join(d, "rss_end.txt")):
            if line.startswith(gw + " "):
                m = re.search(r"VmRSS=(\d+)kB", line)
                return int(m.group(1)) / 1024 if m else None
    except OSError:
        pass
    return None


def redis_info(d):
    """run.sh's redis_info.txt: 'key value' lines and INFO lines (cmdstat_x:calls=..,usec=..; used_cpu_x:1.2)."""
    info = {}
    try:
        for line in open(os.path.join(d, "redis_info.txt")):
            line = line.strip()
            if line.startswith("cmdstat_"):
                name, _, rest = line.partition(":")
                info[name] = dict(x.split("=", 1) for x in rest.split(","))
            elif ":" in line and not " " in line:
                k, _, v = line.partition(":")
                info[k] = v
            elif " " in line:
                k, _, v = line.partition(" ")
                info[k] = v
    except OSError:
        pass
    return info


def redis_core(info):
    """Where run.sh pinned redis-server ('redis_cpu <cpu> server_cpu <cpu>' in redis_info.txt)."""
    words = info.get("redis_cpu", "").split()
    if len(words) == 3 and words[0] != words[2]:
        return "CPU %s (REDIS_CPU; not the servers' core, so its CPU is not on the gateway's)" % words[0]
    return "the servers' core"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", default=[])
    ap.add_argument("--start", action="append", default=[])
    ap.add_argument("--ledger-rows", default="")
    ap.add_argument("--gateway", default="gateway")
    ap.add_argument("--delay-ms", default="")
    a = ap.parse_args()
    gw = a.gateway

    data, dirs = {}, {}
    for spec in a.run:
        kind, d = spec.split("=", 1)
        dirs[kind] = d
        data.update(read_run(kind, d, gw))
    A = {k: agg(v) for k, v in data.items()}
    scen = list(dict.fromkeys(sc for sc, _ in data if "@" not in sc))
    order = lambda s: (0 if s.startswith("small_c") else 1 if s.startswith("small_half") else
                       2 if s.startswith("quote") else 3, s)
    scen.sort(key=order)

    hdr = ["scenario", "target", "req/s", "min-max", "p50 ms", "p99 ms", "p99.9 ms", "peak RSS MiB",
           "own CPU us/req", "errors", "gw/this req/s", "gw-this p99 ms"]
    lines = []
    for s in scen:
        g = A.get((s, gw))
        for t in REFS + [PEER, gw, REDIS_GW, FLOOR]:
            x = A.get((s, t))
            if not x:
                continue
            label = t
            if s.startswith("quote") and t != gw:
                label = t + " (img2video)"
            if s.startswith("quote") and t == gw:
                label = gw + " (quote)"
            if t == REDIS_GW:
                label = "gateway (redis)"
            if t == FLOOR:
                label = "floor (%s pass)" % ("half_floor" if s.startswith("small_half") else "floor")
            rel = ("%.3f" % (g["rps"] / x["rps"]), "%+.3f" % ((g["p99"] - x["p99"]) / 1000)) \
                if g and t in REFS + [PEER, FLOOR] else ("", "")
            lines.append([s, label, "%.0f" % x["rps"], "%.0f-%.0f" % (x["rmin"], x["rmax"]), ms(x["p50"]),
                          ms(x["p99"]), ms(x["p999"]), "%.1f" % x["hwm"], "%.1f" % x["front"],
                          str(x["err"]), *rel])
    print(table(hdr, lines))

    rh = ["scenario", "A/B", "req/s A/B", "p50 A-B ms", "p99 A-B ms", "p99.9 A-B ms", "RSS A/B"]
    rat = []
    for s in scen:
        g = A.get((s, gw))
        if not g:
            continue
        for b in ("nginx", "direct", "nginx_membuf", PEER, FLOOR):
            x = A.get((s, b))
            if not x:
                continue
            rat.append([s, f"{gw}/{b}" + (" (other pass)" if b == FLOOR else ""), "%.3f" % (g["rps"] / x["rps"]), "%+.3f" % ((g["p50"] - x["p50"]) / 1000),
                        "%+.3f" % ((g["p99"] - x["p99"]) / 1000), "%+.3f" % ((g["p999"] - x["p999"]) / 1000),
                        "%.2f" % (g["hwm"] / x["hwm"]) if x["hwm"] else "-"])
        r = A.get((s, REDIS_GW))
        if r:
            rat.append([s, "redis/memory backend", "%.3f" % (r["rps"] / g["rps"]),
                        "%+.3f" % ((r["p50"] - g["p50"]) / 1000), "%+.3f" % ((r["p99"] - g["p99"]) / 1000),
                        "%+.3f" % ((r["p999"] - g["p999"]) / 1000), "%.2f" % (r["hwm"] / g["hwm"]) if g["hwm"] else "-"])
    for s in scen:   # the peer and the floor against nginx and direct of their own pass
        for t, sfx in ((PEER, ""), (FLOOR, "@floor" if not s.startswith("small_half") else "@half_floor")):
            x = A.get((s, t))
            if not x:
                continue
            for b in ("nginx", "direct"):
                y = A.get((s + sfx, b))
                if y:
                    rat.append([s, f"{t}/{b}", "%.3f" % (x["rps"] / y["rps"]),
                                "%+.3f" % ((x["p50"] - y["p50"]) / 1000), "%+.3f" % ((x["p99"] - y["p99"]) / 1000),
                                "%+.3f" % ((x["p999"] - y["p999"]) / 1000),
                                "%.2f" % (x["hwm"] / y["hwm"]) if y["hwm"] else "-"])
    rat.sort(key=lambda l: scen.index(l[0]))
    print("\nratios gateway/nginx, gateway/direct, gateway/haproxy_jwt, gateway/floor (the floor from its own pass), the "
          "Redis backend against the memory backend, and haproxy_jwt and the floor against nginx and direct of their "
          "own pass (medians over repetitions):")
    print(table(rh, rat))

    starts = {}
    for spec in a.start:
        k, p = spec.split("=", 1)
        try:
            starts[k] = json.load(open(p))
        except OSError:
            pass
    print("\nstart and idle (gateway process alone, before/after load):")
    for k, v in starts.items():
        what = {"empty": "fresh ledger", "full": f"ledger after the run ({a.ledger_rows} rows)"}.get(k, k)
        print("  start-to-ready, %-32s median %6.1f ms (min %.1f, max %.1f, %d starts); idle RSS %.1f MiB"
              % (what + ":", v["ready_ms_median"], v["ready_ms_min"], v["ready_ms_max"], len(v["runs"]),
                 v["idle_rss_kb_median"] / 1024))
    for kind, d in dirs.items():
        r = rss_end(d, REDIS_GW if kind == "redis" else gw)
        if r is not None:
            print(f"  RSS after the {kind} run (load stopped, before shutdown): {r:.1f} MiB")

    # ---------------------------------------------------------------- the Redis backend
    redis_scen = [s for s in scen if (s, REDIS_GW) in A and (s, gw) in A]
    if "redis" in dirs:
        info = redis_info(dirs["redis"])
        print("\nRedis state backend (redis pass, right after main: the gateway configured as in main, same limits and "
              "buckets, [state] backend = \"redis\"; %s):" % (
                  "redis-server %s on %s, persistence off (--save \"\" --appendonly no): what AOF "
                  "with appendfsync everysec would add is not measured; state.redis_timeout_ms = %s"
                  % (info.get("redis_version", "?"),
                     redis_core(info),
                     info.get("redis_timeout_ms", "?"))))
        for s in redis_scen:
            g, r = A[(s, gw)], A[(s, REDIS_GW)]
            for name, x in (("memory backend (main pass)", g), ("redis backend (redis pass)", r)):
                extra = ""
                if x is r:
                    extra = " + redis-server %.1f us/req" % r["other"]
                print("  %-27s %6.0f req/s (%.0f-%.0f)  p50 %s  p99 %s  p99.9 %s ms  gateway CPU %.1f us/req%s  "
                      "errors %d" % (name, x["rps"], x["rmin"], x["rmax"], ms(x["p50"]), ms(x["p99"]), ms(x["p999"]),
                                     x["front"], extra, x["err"]))
            print("  redis/memory: x%.3f req/s, p50 %+.3f ms, p99 %+.3f ms, p99.9 %+.3f ms"
                  % (r["rps"] / g["rps"], (r["p50"] - g["p50"]) / 1000, (r["p99"] - g["p99"]) / 1000,
                     (r["p999"] - g["p999"]) / 1000))
            drift = []
            for t in ("direct", "nginx"):
                m, p = A.get((s, t)), A.get((s + "@redis", t))
                if m and p:
                    drift.append("%s %.0f -> %.0f req/s (x%.3f)" % (t, m["rps"], p["rps"], p["rps"] / m["rps"]))
            n_m, n_r = A.get((s, "nginx")), A.get((s + "@redis", "nginx"))
            if drift:
                print("  drift between the passes: " + ", ".join(drift)
                      + ("; relative to nginx of its own pass, redis/memory = x%.3f"
                         % ((r["rps"] / n_r["rps"]) / (g["rps"] / n_m["rps"])) if n_m and n_r else ""))
        ev = [info.get(k) for k in ("cmdstat_evalsha", "cmdstat_eval") if info.get(k)]
        calls = sum(int(e["calls"]) for e in ev)
        usec = sum(float(e["usec"]) for e in ev)
        cpu = sum(float(info.get(k, 0) or 0) for k in ("used_cpu_user", "used_cpu_sys"))
        if calls:
            print("  redis-server: %d script calls (EVALSHA/EVAL, 2 per admitted create), %.1f us each inside Redis "
                  "(INFO commandstats); its whole CPU over the pass %.1f s = %.1f us per create"
                  % (calls, usec / calls, cpu, cpu * 1e6 / (calls / 2)))
        if "dbsize" in info:
            used = int(info.get("budget_max_used", "0") or 0)
            limit = int(info.get("budget_limit", "0") or 0)
            print("  after the pass: %s keys; largest budget counter %s credits of the %s limit (%s); used_memory "
                  "%.1f MiB" % (info["dbsize"], f"{used:,}".replace(",", " "), f"{limit:,}".replace(",", " "),
                                "far from refusing" if limit and used < limit / 100 else "CHECK: close to the limit",
                                int(info.get("used_memory", "0") or 0) / MiB))

    # ---------------------------------------------------------------- the floor
    fl_scen = [s for s in scen if (s, FLOOR) in A]
    if fl_scen:
        print("\nthe floor (bench/floor.rs: a bare actix-web + awc reverse proxy, one worker, mimalloc; reads the body, "
              "forwards it with the Authorization: Token header, answers; no auth, validation, state, logging or "
              "metrics), measured in its own passes (floor: after main; half_floor: right after half, same think time):")
        for s in fl_scen:
            f = A[(s, FLOOR)]
            own = "@half_floor" if s.startswith("small_half") else "@floor"
            n, d = A.get((s + own, "nginx")), A.get((s + own, "direct"))
            g, gn, gd = A.get((s, gw)), A.get((s, "nginx")), A.get((s, "direct"))
            print("  %-15s floor %.0f req/s (%.0f-%.0f)  p50 %s  p99 %s  p99.9 %s ms  own CPU %.1f us/req  peak RSS "
                  "%.1f MiB  errors %d" % (s, f["rps"], f["rmin"], f["rmax"], ms(f["p50"]), ms(f["p99"]), ms(f["p999"]),
                                           f["front"], f["hwm"], f["err"]))
            parts = []
            if n:
                parts.append("floor/nginx x%.3f (same pass)" % (f["rps"] / n["rps"]))
            if d:
                parts.append("floor added p50 %+.3f ms, p99 %+.3f ms (vs its pass's direct)"
                             % ((f["p50"] - d["p50"]) / 1000, (f["p99"] - d["p99"]) / 1000))
            if g:
                parts.append("gateway/floor x%.3f" % (g["rps"] / f["rps"])
                             + (" (x%.3f relative to nginx of each pass)" % ((g["rps"] / gn["rps"]) / (f["rps"] / n["rps"]))
                                if gn and n else ""))
            if parts:
                print("                  " + "; ".join(parts))
            drift = ["%s %.0f -> %.0f req/s (x%.3f)" % (t, m["rps"], p["rps"], p["rps"] / m["rps"])
                     for t, m, p in (("direct", gd, d), ("nginx", gn, n)) if m and p]
            if drift:
                print("                  drift between the gateway's pass and the floor's: " + ", ".join(drift))

    # ---------------------------------------------------------------- own CPU and peak RSS per target
    targets = [("direct (the mock)", "direct"), ("nginx", "nginx"), ("nginx_stream", "nginx_stream"),
               ("nginx_membuf", "nginx_membuf"), (PEER, PEER), (gw, gw), ("gateway (redis)", REDIS_GW),
               ("floor", FLOOR)]
    small = [s for s in scen if re.fullmatch(r"small_c\d+", s)]
    big = sorted([s for s in scen if s.startswith("body15m_c")], key=lambda s: int(s.rsplit("_c", 1)[1]))
    cols = [(s, s.replace("small_c", "small c=") + " us/req") for s in small]
    rh2 = ["target"] + [c for _, c in cols]
    for s in big:
        c = s.replace("body15m_c", "c=")
        rh2 += [f"15MiB {c} ms/req", f"15MiB {c} peak RSS MiB", "per req in flight"]
    rows2 = []
    for label, t in targets:
        row, any_ = [label], False
        for s, _ in cols:
            x = A.get((s, t))
            row.append("%.1f" % x["front"] if x else "")
            any_ |= bool(x)
        for s in big:
            x = A.get((s, t))
            conns = int(s.rsplit("_c", 1)[1])
            row += ["%.2f" % (x["front"] / 1000), "%.1f" % x["hwm"], "%.1f" % (x["hwm"] / conns)] if x else ["", "", ""]
            any_ |= bool(x)
        if any_:
            rows2.append(row)
    if rows2:
        print("\nown CPU per request and peak RSS, per target (CPU time of the target's own process, all its threads, "
              "per request; direct: the mock; gateway (redis): without redis-server's; floor: the floor pass; peak RSS: "
              "VmHWM during the run, max over repetitions; per req in flight: peak RSS / connections, in MiB):")
        print(table(rh2, rows2, right_from=1, group=False))
        idle = starts.get("empty", {}).get("idle_rss_kb_median")
        if idle:
            for s in big:
                x = A.get((s, gw))
                if x:
                    conns = int(s.rsplit("_c", 1)[1])
                    print("  %s %s: (peak RSS %.1f - idle RSS %.1f MiB) / %d in flight = %.1f MiB per 15 MiB request"
                          % (gw, s, x["hwm"], idle / 1024, conns, (x["hwm"] - idle / 1024) / conns))

    # ---------------------------------------------------------------- the performance bars
    def verdict(ok):
        return "MET    " if ok else "NOT MET"
    NA = "NOT MEASURED"
    def cpu(x):
        return "%.1f us/req" % x["front"]
    print("\nbars (issue #16: the gateway against what ops would run instead, and against the floor; own CPU per request "
          "of each target beside it):")
    s = "small_c16"
    g, h, n = A.get((s, gw)), A.get((s, PEER)), A.get((s, "nginx"))
    if g and h:
        print(f"  {verdict(g['rps'] >= h['rps'])} small c=16: gateway >= 1.0x haproxy_jwt req/s: gateway "
              f"{g['rps']:.0f} req/s ({cpu(g)}), haproxy_jwt {h['rps']:.0f} req/s ({cpu(h)}): x{g['rps'] / h['rps']:.3f}")
    else:
        print(f"  {NA} small c=16: gateway >= 1.0x haproxy_jwt req/s (needs the main pass with HAPROXY_JWT=1)")
    if g and n:
        print(f"  {verdict(g['rps'] >= 0.7 * n['rps'])} small c=16: gateway >= 0.7x nginx req/s: gateway "
              f"{g['rps']:.0f} req/s ({cpu(g)}), nginx {n['rps']:.0f} req/s ({cpu(n)}): x{g['rps'] / n['rps']:.3f}")
    # What these two bars leave the gateway per create, against its floor: the bare actix-web + awc proxy (same
    # HTTP stack, nothing of the gateway's own) plus the ledger writer's CPU (the SQLite ledger, DESIGN §6).
    f, mock = A.get((s, FLOOR)), A.get((s, "direct"))
    if g and g.get("threads"):
        th = g["threads"]
        writer = sum(v for k, v in th.items() if k.startswith("ledger-"))
        worker = sum(v for k, v in th.items() if not k.startswith("ledger-"))
        print("          the gateway's own CPU per create by thread: "
              + ", ".join(f"{k} {v:.1f}" for k, v in sorted(th.items(), key=lambda kv: -kv[1]) if v >= 0.05)
              + f" us (worker and the rest {worker:.1f}, ledger threads {writer:.1f})")
        if f and mock:
            checks = worker - f["front"]
            for name, peer, k in (("haproxy_jwt", h, 1.0), ("nginx", n, 0.7)):
                if not peer:
                    continue
                # Everything shares the servers' core with the mock: req/s = 1 / (own CPU + mock's CPU per request).
                room = (peer["front"] + mock["front"]) / k - mock["front"]
                left = room - f["front"] - writer
                print(f"          the {k:.1f}x {name} bar leaves the gateway {room:.1f} us per create; the floor "
                      f"{f['front']:.1f} (floor pass) + the ledger threads {writer:.1f} leave {left:.1f} us for "
                      f"everything the gateway adds on its worker (auth, validation, pricing, policy, admission, "
                      f"settlement, metrics), which costs {checks:.1f} us here (its worker less the floor)")
    for s in redis_scen:
        g, r = A[(s, gw)], A[(s, REDIS_GW)]
        print(f"  {verdict(r['rps'] >= 0.8 * g['rps'])} Redis backend >= 0.8x memory backend req/s "
              f"({s.replace('small_c', 'small creates c=')}): redis {r['rps']:.0f} req/s, memory {g['rps']:.0f} req/s "
              f"(x{r['rps'] / g['rps']:.3f}); gateway CPU {r['front']:.1f} us/req + redis-server {r['other']:.1f} "
              f"us/req (redis), {g['front']:.1f} us/req (memory)")
        # What redis-server may spend per create for the bar, against what the floor of any design costs.
        mock = A.get((s, "direct"))
        info = redis_info(dirs["redis"]) if "redis" in dirs else {}
        ev, calls = info.get("floor_evalsha_us"), info.get("floor_20_incrby_us")
        if mock and ev and calls:
            ev, per_call = float(ev), (float(calls) - float(ev)) / 20
            room = (g["front"] + mock["front"]) / 0.8 - r["front"] - mock["front"]
            print(f"          the bar leaves redis-server {room:.1f} us per create (gateway {r['front']:.1f} + mock "
                  f"{mock['front']:.1f} us beside it); its floor, by redis-benchmark on the same redis-server: an "
                  f"empty script's round trip {ev:.1f} us (2 per create: {2 * ev:.1f} us), each redis.call "
                  f"{per_call:.2f} us more, so {max(room - 2 * ev, 0) / per_call if per_call > 0 else 0:.0f} calls "
                  f"per create at most")
    if not redis_scen:
        print(f"  {NA} Redis backend >= 0.8x memory backend req/s (needs the redis pass)")
    f = A.get(("small_c16", FLOOR))
    if f:
        print(f"          (the floor at small c=16: {f['rps']:.0f} req/s, {cpu(f)}, floor pass)")
    s = "body15m_c4"
    g, h = A.get((s, gw)), A.get((s, PEER))
    if g and h:
        print(f"  {verdict(g['rps'] >= h['rps'])} 15 MiB c=4: gateway >= 1.0x haproxy_jwt req/s: gateway "
              f"{g['rps']:.1f} req/s ({g['front'] / 1000:.2f} ms/req), haproxy_jwt {h['rps']:.1f} req/s "
              f"({h['front'] / 1000:.2f} ms/req): x{g['rps'] / h['rps']:.3f}")
        fl = A.get((s, FLOOR))
        if fl:
            print(f"          (the floor at 15 MiB c=4: {fl['rps']:.1f} req/s, {fl['front'] / 1000:.2f} ms/req, floor pass; "
                  f"the gateway's CPU per create is {g['front'] / fl['front']:.3f}x the floor's, haproxy_jwt's "
                  f"{h['front'] / fl['front']:.3f}x)")
    else:
        print(f"  {NA} 15 MiB c=4: gateway >= 1.0x haproxy_jwt req/s (needs the main pass with HAPROXY_JWT=1)")
    for s in big:
        g = A.get((s, gw))
        if g:
            conns = int(s.rsplit("_c", 1)[1])
            others = ", ".join("%s %.1f" % (t, A[(s, t)]["hwm"] / conns)
                               for t in ("nginx_membuf", PEER, FLOOR, "nginx") if (s, t) in A)
            print(f"  REPORT  peak RSS per 15 MiB request in flight (c={conns}): gateway {g['hwm']:.1f} MiB / {conns} = "
                  f"{g['hwm'] / conns:.1f} MiB" + (f" (others, MiB per request: {others})" if others else ""))
    s = "small_c1"
    g, d = A.get((s, gw)), A.get((s, "direct"))
    if g and d:
        add = (g["p50"] - d["p50"]) / 1000
        print(f"  {verdict(add <= 0.1)} added p50 at 1 connection <= 0.1 ms: {add:+.3f} ms (gateway {ms(g['p50'])} ms, "
              f"direct {ms(d['p50'])} ms; gateway {cpu(g)}"
              + "".join(f", {t} {(A[(s, t)]['p50'] - d['p50']) / 1000:+.3f} ms" for t in ("nginx", PEER) if (s, t) in A)
              + ")")
        f, fd = A.get((s, FLOOR)), A.get((s + "@floor", "direct"))
        if f and fd:
            print(f"          (the floor at 1 connection, floor pass: {(f['p50'] - fd['p50']) / 1000:+.3f} ms over its "
                  f"pass's direct, {cpu(f)}: the bar leaves the gateway's own work "
                  f"{(0.1 - (f['p50'] - fd['p50']) / 1000) * 1000:.0f} us of latency)")
    else:
        print(f"  {NA} added p50 at 1 connection <= 0.1 ms (needs small_c1 in the main pass: MAIN_CONNS)")
    half = [s for s in scen if s.startswith("small_half")]
    for s in half:
        g, d = A.get((s, gw)), A.get((s, "direct"))
        f, fd = A.get((s, FLOOR)), A.get((s + "@half_floor", "direct"))
        if g and d and f and fd:
            ga, fa = (g["p99"] - d["p99"]) / 1000, (f["p99"] - fd["p99"]) / 1000
            print(f"  {verdict(ga - fa <= 0.5)} added p99 at ~half peak within 0.5 ms of the floor's at the same load: "
                  f"gateway {ga:+.3f} ms ({g['rps']:.0f} req/s, {cpu(g)}), floor {fa:+.3f} ms ({f['rps']:.0f} req/s, "
                  f"{cpu(f)}): {ga - fa:+.3f} ms (each against its own pass's direct; think time {a.delay_ms} ms/conn)")
            print(f"          (the servers' core was {g['busy']:.0f}% busy under the gateway, {f['busy']:.0f}% under the "
                  f"floor: the same arrivals queue behind {g['front'] / max(f['front'], 0.1):.1f}x the CPU per request)")
        else:
            print(f"  {NA} added p99 at ~half peak within 0.5 ms of the floor's (needs the half and half_floor passes)")
    if not half:
        print(f"  {NA} added p99 at ~half peak within 0.5 ms of the floor's (needs the half and half_floor passes)")

    print("\nearlier bars (README \"Performance\"):")
    for c in ("16", "64"):
        s = f"small_c{c}"
        g, n = A.get((s, gw)), A.get((s, "nginx"))
        if g and n:
            print(f"  {verdict(g['rps'] >= n['rps'])} small c={c}: gateway {g['rps']:.0f} req/s >= nginx "
                  f"{n['rps']:.0f} req/s (x{g['rps'] / n['rps']:.3f})")
    for s in half:
        g, d = A.get((s, gw)), A.get((s, "direct"))
        peak = max([A[(x, gw)]["rps"] for x in ("small_c16", "small_c64") if (x, gw) in A] or [0])
        if g and d:
            add = (g["p99"] - d["p99"]) / 1000
            print(f"  {verdict(add <= 1.0)} added p99 at ~half peak ({g['rps']:.0f} req/s of a {peak:.0f} req/s "
                  f"peak = {100 * g['rps'] / peak if peak else 0:.0f}%, mean think time {a.delay_ms} ms/conn): "
                  f"{add:+.3f} ms vs direct (gateway {ms(g['p99'])} ms, direct {ms(d['p99'])} ms at "
                  f"{d['rps']:.0f} req/s)")
    for s in [x for x in scen if x.startswith("body15m_c4")]:
        g, m = A.get((s, gw)), A.get((s, "nginx_membuf"))
        if g and m:
            print(f"  {verdict(g['rps'] >= m['rps'])} 15 MiB c=4: gateway {g['rps']:.1f} req/s >= nginx in-memory "
                  f"buffering {m['rps']:.1f} req/s (x{g['rps'] / m['rps']:.3f})")
    for s in [x for x in scen if x.startswith("body15m_c16")]:
        g = A.get((s, gw))
        if g:
            body = 15 * MiB
            limit = (3 * 16 * body + 40 * MiB) / MiB
            print(f"  {verdict(g['hwm'] <= limit)} 15 MiB c=16: gateway peak RSS {g['hwm']:.1f} MiB <= "
                  f"3 x 16 x 15 MiB + 40 MiB = {limit:.0f} MiB")
    if "empty" in starts:
        v = starts["empty"]
        print(f"  {verdict(v['idle_rss_kb_median'] / 1024 <= 30)} idle RSS {v['idle_rss_kb_median'] / 1024:.1f} MiB "
              f"<= 30 MiB")
        print(f"  {verdict(v['ready_ms_median'] <= 200)} start to ready {v['ready_ms_median']:.1f} ms <= 200 ms "
              f"(fresh ledger)")
    if "full" in starts:
        v = starts["full"]
        print(f"  {verdict(v['ready_ms_median'] <= 200)} start to ready {v['ready_ms_median']:.1f} ms <= 200 ms "
              f"(ledger after the run, {a.ledger_rows} rows)")
    print("  (validation <= 20 ms for 15 MB, no whole-image decode, no extra body copy: "
          "`cargo bench --bench validate`, bench/PROFILE.md)")

    notes = []
    errs = [f"{s}/{t} ({x['err']} of {x['requests']})" for (s, t), x in A.items() if x["err"]]
    if errs:
        notes.append("WARNING: errors (non-2xx/3xx, socket errors, timeouts) in: " + ", ".join(errs))
    noisy = [f"{s}/{t} ({x['foreign']:.0f}%)" for (s, t), x in A.items() if x["foreign"] > 5]
    if noisy:
        notes.append("WARNING: > 5% CPU used outside the benchmark during: " + ", ".join(noisy))
    wide = [f"{s}/{t}" for (s, t), x in A.items() if x["rps"] and (x["rmax"] - x["rmin"]) / x["rps"] > 0.2]
    if wide:
        notes.append("note: req/s spread (max-min)/median > 20% in: " + ", ".join(wide))
    if notes:
        print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
