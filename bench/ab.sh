#!/usr/bin/env bash
# bench/ab.sh - a quick A/B of gateway binaries on the benchmark's layout, for trying a change before a full run.
#
#   bash bench/ab.sh BIN [BIN...]          # each binary in turn, ROUNDS times, interleaved; one line per measurement
#
# Needs a scratch directory left by `bash bench/run.sh` (QUICK=1 is enough): its gateway config, ES256 key pair,
# staged harness (the mock Vidu's nginx config) and 15 MiB body. Starts the mock Vidu and one gateway at a time,
# both on SERVER_CPU (1), runs wrk on LOADGEN_CPU (0) against 127.0.0.1:18090 for DURATION, prints req/s, p50,
# p99, the gateway's CPU per request (all its threads), context switches per request and peak RSS, and stops what
# it started. Every gateway starts on a fresh ledger.
#
# Environment (defaults in brackets):
#   CONNS [16]  THINK_MS [] (mean think time per connection, as bench/post.lua's DELAY_MS: half-load runs)
#   BODY [] (a request body file, e.g. $SCRATCH/work/bodies/body_15m.json; default the small request)
#   DURATION [5s]  ROUNDS [2]  SCRATCH [${TMPDIR:-/tmp}/vidu-gateway-bench]  SERVER_CPU [1]  LOADGEN_CPU [0]
#   GW_ENV [] extra environment for the gateway, e.g. "MIMALLOC_ALLOW_THP=0"
#
# These loops vary by ±5-8 % between runs on the project's machine: trust differences well above that, and
# confirm with bench/run.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
(( $# >= 1 )) || { sed -n 2,18p "$0" >&2; exit 2; }
CONNS="${CONNS:-16}"; THINK_MS="${THINK_MS:-}"; BODY="${BODY:-}"; DURATION="${DURATION:-5s}"
ROUNDS="${ROUNDS:-2}"; SCRATCH="${SCRATCH:-${TMPDIR:-/tmp}/vidu-gateway-bench}"
SERVER_CPU="${SERVER_CPU:-1}"; LOADGEN_CPU="${LOADGEN_CPU:-0}"; GW_ENV="${GW_ENV:-}"
for f in gateway.toml es256.key.pem harness/conf/upstream.conf; do
  [[ -f "$SCRATCH/$f" ]] || { echo "ab.sh: $SCRATCH/$f missing: run 'QUICK=1 bash bench/run.sh' once first" >&2; exit 1; }
done

AB="$SCRATCH/ab"; RUN="$AB/run"
mkdir -p "$RUN/logs" "$RUN/tmp"
sed "s|^ledger_path = .*|ledger_path = \"$AB/ledger.sqlite3\"|" "$SCRATCH/gateway.toml" > "$AB/gateway.toml"
URL=http://127.0.0.1:18090/ent/v2/img2video
UP=""; GW=""
stop() { [[ -n "$GW" ]] && kill "$GW" 2>/dev/null; [[ -n "$UP" ]] && kill "$UP" 2>/dev/null; wait 2>/dev/null || true; GW=""; UP=""; }
trap stop EXIT

switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/{s+=$2} END{print s+0}'; }
cpu_ticks() { awk '{print $14+$15}' /proc/"$1"/stat; }

measure() {           # binary
  local bin=$1
  rm -f "$AB"/ledger.sqlite3*
  taskset -c "$SERVER_CPU" nginx -p "$RUN/" -e logs/upstream.stderr.log -c "$SCRATCH/harness/conf/upstream.conf" \
      >/dev/null 2>&1 &
  UP=$!
  # shellcheck disable=SC2086  # GW_ENV is a list of VAR=value words
  taskset -c "$SERVER_CPU" env $GW_ENV "$bin" serve --config "$AB/gateway.toml" >"$AB/gateway.log" 2>&1 &
  GW=$!
  for _ in $(seq 200); do curl -s -o /dev/null http://127.0.0.1:18090/healthz && break; sleep 0.05; done
  local token
  token=$("$bin" token --config "$AB/gateway.toml" --sub bench --team perf --ttl 3600 \
          --private-key "$SCRATCH/es256.key.pem")
  export AUTH_TOKEN=$token DELAY_MS=$THINK_MS BODY_FILE=$BODY
  taskset -c "$LOADGEN_CPU" wrk -t1 -c"$CONNS" -d1s -s "$ROOT/bench/post.lua" "$URL" >/dev/null   # warm-up
  local cs0 t0 out cs1 t1 reqs
  cs0=$(switches "$GW"); t0=$(cpu_ticks "$GW")
  out=$(taskset -c "$LOADGEN_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$ROOT/bench/post.lua" "$URL")
  cs1=$(switches "$GW"); t1=$(cpu_ticks "$GW")
  reqs=$(awk '/requests in/{print $1}' <<<"$out"); (( reqs > 0 )) || reqs=1
  printf '%-40s c=%s think=%s req/s=%s p50=%s p99=%s cpu_us/req=%s switches/req=%s peak_rss_kB=%s %s\n' \
    "$bin" "$CONNS" "${THINK_MS:--}" \
    "$(awk '/Requests\/sec/{print $2}' <<<"$out")" \
    "$(awk '$1=="50%"{print $2}' <<<"$out")" "$(awk '$1=="99%"{print $2}' <<<"$out")" \
    "$(( (t1 - t0) * 1000000 / $(getconf CLK_TCK) / reqs ))" \
    "$(awk -v a="$cs0" -v b="$cs1" -v n="$reqs" 'BEGIN{printf "%.2f", (b-a)/n}')" \
    "$(awk '/VmHWM/{print $2}' /proc/"$GW"/status)" \
    "$(grep -i 'non-2xx' <<<"$out" || true)"
  stop
}

for _ in $(seq "$ROUNDS"); do
  for bin in "$@"; do measure "$bin"; done
done
