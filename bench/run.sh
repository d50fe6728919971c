#!/usr/bin/env bash
# bench/run.sh - the gateway beside nginx and a direct call, in one run, on this machine.
#
#   bash bench/run.sh              # full run (~13 min): builds, measures, prints the table, writes bench/results/latest.txt
#   QUICK=1 bash bench/run.sh      # smoke run (~3 min): DURATION=3s REPEATS=1, writes nothing into the repo
#
# What it does, in order (everything on 127.0.0.1, every process it starts is stopped by PID):
#   1. checks the tools (nginx, libnginx-mod-http-echo, wrk, curl, python3, openssl, taskset, ss): installs
#      nothing, prints the apt-get line and exits 1 when one is missing;
#   2. builds the release binary into ${CARGO_TARGET_DIR:-target};
#   3. writes a real gateway config into $SCRATCH: upstream.mode = "vidu" against the mock Vidu on :18081, ES256
#      JWT with a fresh P-256 key pair (openssl), the built-in catalog, admission on (user, team and global
#      rates, in-flight slots and day/month budgets, far too high to reject), the SQLite ledger in $SCRATCH,
#      log level warn, listening on 127.0.0.1:18090; mints a token with `vidu-gateway token --private-key`;
#   4. start-to-ready time (spawn until /readyz answers 200, polled every 5 ms, median of START_RUNS starts) and
#      idle RSS, with a fresh ledger (bench/start_ready.py);
#   5. the harness (../shared/bench/bench.sh, staged into $SCRATCH/harness with bench/post.lua and the readiness
#      probe fix described in bench/README.md) four times, each starting and stopping mock Vidu, nginx and the
#      gateway:
#        main   small img2video requests (URL image) at 16 and 64 connections; a 15 MiB data-URI request at 4
#               connections (direct, nginx, nginx streaming, nginx in-memory buffering, gateway)
#        quote  POST /gateway/v1/img2video/quote, small body, QUOTE_CONNS connections (direct/nginx rows are
#               their img2video answer, as a reference)
#        half   small requests at about half the gateway's peak throughput (think time per connection), for the
#               added-p99 bar
#        mem16  the 15 MiB request at 16 connections (direct, nginx, gateway), for the peak-RSS bar
#   6. start-to-ready again with the ledger the runs left behind;
#   7. prints one table (bench/summary.py): req/s, p50/p99/p99.9, peak RSS, own CPU per request, errors, the
#      ratios gateway/nginx and gateway/direct, start/idle figures, and the bars met or not.
#
# Environment (defaults in brackets):
#   QUICK [0]            1 = DURATION=3s REPEATS=1 START_RUNS=3, results not saved into the repo
#   DURATION [10s]  REPEATS [3]    passed to the harness (per measurement; targets interleaved per repetition)
#   QUOTE_CONNS [16]  HALF_CONNS [64]  START_RUNS [5]  MEM16 [1] (0 skips the 16 x 15 MiB run)  MEM16_REPEATS [1]
#   SKIP_BUILD [0]       1 = use the existing binary
#   BENCH_HARNESS [../shared/bench/bench.sh, relative to the repo root]
#   SCRATCH [${TMPDIR:-/tmp}/vidu-gateway-bench]   config, keys, ledger, logs, harness copy, raw results
#   SAVE [1, 0 when QUICK=1]   write the printed table to bench/results/latest.txt
#   GW_WORKERS [1]       server.workers of the gateway (nginx runs worker_processes 1; all servers share one core)
#   PIN, LOADGEN_CPU, SERVER_CPU, WRK_THREADS, QUIET_*, FOREIGN_MAX, RETRIES, NICE: passed to the harness as is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[run.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

QUICK="${QUICK:-0}"
if [[ "$QUICK" == 1 ]]; then
  DURATION="${DURATION:-3s}"; REPEATS="${REPEATS:-1}"; START_RUNS="${START_RUNS:-3}"; SAVE="${SAVE:-0}"
fi
DURATION="${DURATION:-10s}"
REPEATS="${REPEATS:-3}"
START_RUNS="${START_RUNS:-5}"
SAVE="${SAVE:-1}"
QUOTE_CONNS="${QUOTE_CONNS:-16}"
HALF_CONNS="${HALF_CONNS:-64}"
MEM16="${MEM16:-1}"
MEM16_REPEATS="${MEM16_REPEATS:-1}"
SKIP_BUILD="${SKIP_BUILD:-0}"
GW_WORKERS="${GW_WORKERS:-1}"
HARNESS="${BENCH_HARNESS:-../shared/bench/bench.sh}"
SCRATCH="${SCRATCH:-${TMPDIR:-/tmp}/vidu-gateway-bench}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
GW_PORT=18090
GW_URL="http://127.0.0.1:$GW_PORT"
export PIN="${PIN:-1}" SERVER_CPU="${SERVER_CPU:-1}"

# ------------------------------------------------------------------ 1. tools (nothing is installed)
missing=()
for bin in nginx wrk curl python3 openssl taskset ss; do command -v "$bin" >/dev/null 2>&1 || missing+=("$bin"); done
[[ -f /usr/lib/nginx/modules/ngx_http_echo_module.so ]] || missing+=("libnginx-mod-http-echo")
[[ "$SKIP_BUILD" == 1 ]] || command -v cargo >/dev/null 2>&1 || missing+=("cargo (https://rustup.rs)")
if (( ${#missing[@]} )); then
  log "missing: ${missing[*]}"
  echo "install the benchmark's tools (Debian/Ubuntu packages), then rerun:" >&2
  echo "  sudo apt-get install -y nginx libnginx-mod-http-echo wrk curl python3 openssl util-linux iproute2" >&2
  exit 1
fi
[[ -f "$HARNESS" ]] || die "harness not found at $HARNESS (set BENCH_HARNESS to ../shared/bench/bench.sh's path)"
HARNESS="$(cd "$(dirname "$HARNESS")" && pwd)/$(basename "$HARNESS")"
[[ -z "$(ss -ltnH "sport = :$GW_PORT")" ]] || die "port $GW_PORT already in use; stop that process first"

# ------------------------------------------------------------------ 2. build
# The source the binary is built from (read before the build: another checkout may change meanwhile).
GIT_DESC="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo '+local changes')"
if [[ "$SKIP_BUILD" != 1 ]]; then
  log "building the release binary into $TARGET_DIR (cargo build --release)"
  cargo build --release --quiet
fi
BIN="$(cd "$TARGET_DIR/release" && pwd)/vidu-gateway"
[[ -x "$BIN" ]] || die "no binary at $BIN"

# ------------------------------------------------------------------ 3. scratch: keys, config, harness, token
mkdir -p "$SCRATCH"
SCRATCH="$(cd "$SCRATCH" && pwd)"
[[ "$SCRATCH" != *' '* ]] || die "SCRATCH must not contain spaces (the harness runs GATEWAY_CMD through bash -c)"
rm -rf "$SCRATCH/results" "$SCRATCH/harness" "$SCRATCH"/ledger.sqlite3* "$SCRATCH/logs"
mkdir -p "$SCRATCH/results" "$SCRATCH/logs"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$SCRATCH/es256.key.pem" 2>/dev/null
openssl pkey -in "$SCRATCH/es256.key.pem" -pubout -out "$SCRATCH/es256.pub.pem" 2>/dev/null
CFG="$SCRATCH/gateway.toml"
HIGH_RATE=100000000        # requests per minute and burst: never reached
HIGH_SLOTS=100000          # concurrent requests
HIGH_CREDITS=1000000000000 # credits per day / month
cat >"$CFG" <<EOF
# Written by bench/run.sh: the real request path (ES256 JWT, validation against the built-in catalog, pricing,
# policy, admission with the SQLite ledger, forwarding with awc) against the mock Vidu of the harness.
# No [models.*] table: the seed catalog applies.
[server]
listen = "127.0.0.1:$GW_PORT"
max_body_bytes = 20971520          # 20 MiB: the 15 MiB body passes
workers = $GW_WORKERS
shutdown_timeout_secs = 5

[upstream]
mode = "vidu"
base_url = "http://127.0.0.1:18081"
api_key = "bench-enterprise-key-not-a-secret"
connect_timeout_ms = 3000
request_timeout_ms = 30000

[auth]
algorithms = ["ES256"]
public_key_files = ["$SCRATCH/es256.pub.pem"]

[policy]
timezone = "Asia/Shanghai"

[policy.defaults]
requests_per_minute = $HIGH_RATE
burst = $HIGH_RATE
max_in_flight = $HIGH_SLOTS
daily_credits = $HIGH_CREDITS
monthly_credits = $HIGH_CREDITS

[policy.teams.perf]
team_requests_per_minute = $HIGH_RATE
team_burst = $HIGH_RATE
team_max_in_flight = $HIGH_SLOTS
team_daily_credits = $HIGH_CREDITS
team_monthly_credits = $HIGH_CREDITS

[policy.global]
requests_per_minute = $HIGH_RATE
burst = $HIGH_RATE
max_in_flight = $HIGH_SLOTS
daily_credits = $HIGH_CREDITS
monthly_credits = $HIGH_CREDITS

[state]
backend = "memory"
ledger_path = "$SCRATCH/ledger.sqlite3"

[telemetry]
log_format = "json"
log_level = "warn"
EOF
"$BIN" check-config --config "$CFG" >/dev/null 2>"$SCRATCH/logs/check-config.txt" \
  || { cat "$SCRATCH/logs/check-config.txt" >&2; die "the generated config is invalid"; }
TOKEN="$("$BIN" token --config "$CFG" --sub bench --team perf --ttl 86400 --private-key "$SCRATCH/es256.key.pem")"
[[ "$TOKEN" == eyJ* ]] || die "could not mint a token"

# Staged copy of the harness: its own files, plus bench/post.lua (p99.9, think time) and a readiness probe that
# posts the small img2video request (the harness probes with '{"ping":1}', which a validating gateway answers 400).
H="$SCRATCH/harness"
mkdir -p "$H"
cp -r "$(dirname "$HARNESS")/conf" "$(dirname "$HARNESS")/lua" "$H/"
cp "$HARNESS" "$H/bench.sh"
cp "$ROOT/bench/post.lua" "$H/lua/post.lua"
if grep -q "\-d '{\"ping\":1}'" "$H/bench.sh"; then
  sed -i "s|-d '{\"ping\":1}'|-d \"\$SMALL_BODY\"|" "$H/bench.sh"
fi

harness() {         # kind, then VAR=value... for the harness; prints the results directory
  local kind=$1; shift
  local out="$SCRATCH/results/$kind"
  log "harness run '$kind': $*"
  local rc=0
  # progress (one line per measurement) on stderr as it happens; the whole output in the log
  env BENCH_WORK="$SCRATCH/work" OUT_DIR="$out" DURATION="$DURATION" REPEATS="$REPEATS" \
      GATEWAY_TOKEN="$TOKEN" GATEWAY_CMD="$BIN serve --config $CFG" GATEWAY_NAME=gateway \
      "$@" bash "$H/bench.sh" 2>&1 | tee "$SCRATCH/logs/$kind.txt" \
    | { grep --line-buffered -E 'rps=|busy|ERROR|WARN' >&2 || true; } || rc=$?
  (( rc == 0 )) || { tail -30 "$SCRATCH/logs/$kind.txt" >&2; die "harness run '$kind' failed (log: $SCRATCH/logs/$kind.txt)"; }
  RESULT_DIR="$(ls -d "$out"/*/ | tail -1)"
  RESULT_DIR="${RESULT_DIR%/}"
  cp "$RUN_GW_LOG" "$RESULT_DIR/gateway.log" 2>/dev/null || true
}
RUN_GW_LOG="$SCRATCH/work/run/logs/gateway.out"

PIN_ARG=(); [[ "$PIN" == 1 ]] && PIN_ARG=(--pin "$SERVER_CPU")

# ------------------------------------------------------------------ 4. start-to-ready and idle RSS, fresh ledger
log "start-to-ready and idle RSS: $START_RUNS starts, fresh ledger"
python3 "$ROOT/bench/start_ready.py" --bin "$BIN" --config "$CFG" --url "$GW_URL/readyz" --runs "$START_RUNS" \
    "${PIN_ARG[@]}" --log "$SCRATCH/logs/start_empty.log" --label "fresh ledger" --json "$SCRATCH/start_empty.json"

# ------------------------------------------------------------------ 5. the harness runs
harness main GATEWAY_URL="$GW_URL" SMALL_CONNS="16 64" LARGE_SIZES="15m" LARGE_CONNS=4
MAIN="$RESULT_DIR"

# The quote: the harness appends REQ_PATH to GATEWAY_URL; a query string carries it off the quote path.
harness quote GATEWAY_URL="$GW_URL/gateway/v1/img2video/quote?bench=" SMALL_CONNS="$QUOTE_CONNS" LARGE_SIZES=""
QUOTE="$RESULT_DIR"

# Half of the gateway's peak (the better of c=16/c=64 in the main run): HALF_CONNS connections with a think time.
read -r PEAK DELAY_MS < <(python3 - "$MAIN/runs.tsv" "$HALF_CONNS" <<'PY'
import csv, statistics, sys, math
rows = [r for r in csv.DictReader(open(sys.argv[1]), delimiter='\t') if r['target'] == 'gateway' and r['scenario'].startswith('small_')]
by = {}
for r in rows: by.setdefault(r['scenario'], []).append(float(r['rps']))
peak = max(statistics.median(v) for v in by.values())
conns = int(sys.argv[2])
print('%.0f %.1f' % (peak, max(1.0, 1000.0 * conns / (peak / 2))))
PY
)
log "gateway peak ${PEAK} req/s: half load = $HALF_CONNS connections with ${DELAY_MS} ms mean think time (exponential)"
harness half GATEWAY_URL="$GW_URL" SMALL_CONNS="$HALF_CONNS" LARGE_SIZES="" DELAY_MS="$DELAY_MS"
HALF="$RESULT_DIR"

RUNS=(--run "main=$MAIN" --run "quote=$QUOTE" --run "half=$HALF")
if [[ "$MEM16" == 1 ]]; then
  REPEATS_SAVED=$REPEATS; REPEATS=$MEM16_REPEATS
  harness mem16 GATEWAY_URL="$GW_URL" SMALL_CONNS="" LARGE_SIZES="15m" LARGE_CONNS=16 NGINX_VARIANTS=0
  REPEATS=$REPEATS_SAVED
  RUNS+=(--run "mem16=$RESULT_DIR")
fi

# ------------------------------------------------------------------ 6. start-to-ready with the ledger of the runs
ROWS="$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from reservations").fetchone()[0])' "$SCRATCH/ledger.sqlite3" 2>/dev/null || echo '?')"
log "start-to-ready again, ledger with $ROWS reservations"
python3 "$ROOT/bench/start_ready.py" --bin "$BIN" --config "$CFG" --url "$GW_URL/readyz" --runs "$START_RUNS" \
    "${PIN_ARG[@]}" --log "$SCRATCH/logs/start_full.log" --label "full ledger" --json "$SCRATCH/start_full.json"

# ------------------------------------------------------------------ 7. the table
{
  echo "vidu-gateway benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit $GIT_DESC$( [[ "$SKIP_BUILD" == 1 ]] && echo ' (SKIP_BUILD: existing binary)')"
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -h | awk '/^Mem:/{print $2}') RAM, $(uname -sr)"
  echo "$(nginx -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'); PIN=$PIN (load generator on CPU ${LOADGEN_CPU:-0}, every server on CPU $SERVER_CPU), gateway workers=$GW_WORKERS"
  echo "DURATION=$DURATION REPEATS=$REPEATS (mem16: $MEM16_REPEATS) QUOTE_CONNS=$QUOTE_CONNS half load: $HALF_CONNS conns, ${DELAY_MS} ms mean think time"
  echo "command: $( [[ "$QUICK" == 1 ]] && echo 'QUICK=1 ')bash bench/run.sh"
  echo
  python3 "$ROOT/bench/summary.py" "${RUNS[@]}" --start "empty=$SCRATCH/start_empty.json" \
      --start "full=$SCRATCH/start_full.json" --ledger-rows "$ROWS" --delay-ms "$DELAY_MS"
} | tee "$SCRATCH/summary.txt"
if [[ "$SAVE" == 1 ]]; then
  mkdir -p "$ROOT/bench/results"
  cp "$SCRATCH/summary.txt" "$ROOT/bench/results/latest.txt"
  log "table saved to bench/results/latest.txt"
fi
log "raw results: $SCRATCH/results/*/  logs: $SCRATCH/logs/  table: $SCRATCH/summary.txt"
