#!/usr/bin/env python3
"""bench/summary.py - one table from the harness runs of bench/run.sh, with the ratios and the performance bars.

    summary.py --run main=DIR [--run quote=DIR] [--run half=DIR] [--run mem16=DIR]
               [--start empty=JSON] [--start full=JSON] [--ledger-rows N] [--gateway NAME]

Each DIR is one results directory of ../shared/bench/bench.sh (runs.tsv, raw/*.txt, rss_end.txt). Figures are
medians over the repetitions (peak RSS: the maximum); p99.9 comes from the RESULT lines of bench/post.lua in the
raw wrk outputs. Kinds:
  main   small_c16, small_c64, body15m_c4              (as the harness names them)
  quote  small_cN, the gateway target hitting POST /gateway/v1/img2video/quote  -> quote_cN
  half   small_cN with a think time per connection (DELAY_MS) -> small_half_cN: latency at ~half peak load
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
MiB = 1024 * 1024


def read_run(kind, d, gw):
    rows = list(csv.DictReader(open(os.path.join(d, "runs.tsv")), delimiter="\t"))
    out = {}
    for r in rows:
        sc = r["scenario"]
        if kind == "quote":
            sc = sc.replace("small_", "quote_")
        elif kind == "half":
            sc = sc.replace("small_", "small_half_")
        raw = os.path.join(d, "raw", f"{r['scenario']}.{r['target']}.r{r['rep']}.txt")
        extra = {}
        try:
            for line in open(raw):
                if line.startswith("RESULT"):
                    extra = dict(x.split("=", 1) for x in line.split()[1:])
        except OSError:
            pass
        r = dict(r, p999_us=extra.get("p999_us", "nan"), p9999_us=extra.get("p9999_us", "nan"),
                 err_status=extra.get("err_status", "0"))
        out.setdefault((sc, r["target"]), []).append(r)
    return out


def agg(rs):
    f = lambda k: [float(r[k]) for r in rs]
    med = st.median
    return dict(rps=med(f("rps")), rmin=min(f("rps")), rmax=max(f("rps")), p50=med(f("p50_us")),
                p99=med(f("p99_us")), p999=med(f("p999_us")), hwm=max(f("hwm_front_kb")) / 1024,
                front=med(f("front_cpu_us_req")), srv=med(f("srv_cpu_us_req")), err=int(sum(f("errors"))),
                err_status=int(sum(f("err_status"))), foreign=max(f("foreign_pct")), n=len(rs),
                requests=int(sum(f("requests"))))


def ms(us):
    if us != us:  # nan
        return "-"
    return "%.3f" % (us / 1000) if us < 10000 else "%.1f" % (us / 1000)


def table(h, ls, right_from=2):
    w = [max([len(x)] + [len(l[i]) for l in ls]) for i, x in enumerate(h)]
    fmt = lambda l: "  ".join(x.rjust(w[i]) if i >= right_from else x.ljust(w[i]) for i, x in enumerate(l))
    out = [fmt(h), "  ".join("-" * x for x in w)]
    prev = None
    for l in ls:
        if prev is not None and l[0] != prev:
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
    scen = list(dict.fromkeys(sc for sc, _ in data))
    order = lambda s: (0 if s.startswith("small_c") else 1 if s.startswith("small_half") else
                       2 if s.startswith("quote") else 3, s)
    scen.sort(key=order)

    hdr = ["scenario", "target", "req/s", "min-max", "p50 ms", "p99 ms", "p99.9 ms", "peak RSS MiB",
           "own CPU us/req", "errors", "gw/this req/s", "gw-this p99 ms"]
    lines = []
    for s in scen:
        g = A.get((s, gw))
        for t in REFS + [gw]:
            x = A.get((s, t))
            if not x:
                continue
            label = t
            if s.startswith("quote") and t != gw:
                label = t + " (img2video)"
            if s.startswith("quote") and t == gw:
                label = gw + " (quote)"
            rel = ("%.3f" % (g["rps"] / x["rps"]), "%+.3f" % ((g["p99"] - x["p99"]) / 1000)) \
                if g and t != gw else ("", "")
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
        for b in ("nginx", "direct", "nginx_membuf"):
            x = A.get((s, b))
            if not x:
                continue
            rat.append([s, f"{gw}/{b}", "%.3f" % (g["rps"] / x["rps"]), "%+.3f" % ((g["p50"] - x["p50"]) / 1000),
                        "%+.3f" % ((g["p99"] - x["p99"]) / 1000), "%+.3f" % ((g["p999"] - x["p999"]) / 1000),
                        "%.2f" % (g["hwm"] / x["hwm"]) if x["hwm"] else "-"])
    print("\nratios gateway/nginx and gateway/direct (medians over repetitions):")
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
        r = rss_end(d, gw)
        if r is not None:
            print(f"  RSS after the {kind} run (load stopped, before shutdown): {r:.1f} MiB")

    # ---------------------------------------------------------------- the performance bars
    print("\nbars (the performance targets, README \"Performance\"):")
    def verdict(ok):
        return "MET    " if ok else "NOT MET"
    for c in ("16", "64"):
        s = f"small_c{c}"
        g, n = A.get((s, gw)), A.get((s, "nginx"))
        if g and n:
            print(f"  {verdict(g['rps'] >= n['rps'])} small c={c}: gateway {g['rps']:.0f} req/s >= nginx "
                  f"{n['rps']:.0f} req/s (x{g['rps'] / n['rps']:.3f})")
    half = [s for s in scen if s.startswith("small_half")]
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
