#!/usr/bin/env bash
# bench/run.sh - the gateway beside nginx, haproxy_jwt, a bare actix-web + awc proxy (the floor) and a direct call,
# in one run, on this machine.
#
#   bash bench/run.sh              # full run (~22 min + build): measures, prints the table, writes bench/results/latest.txt
#   QUICK=1 bash bench/run.sh      # smoke run (~6 min + build): DURATION=3s REPEATS=1, writes nothing into the repo
#   PASSES="main redis" bash bench/run.sh   # only what the Redis-backend bar needs
#   PASSES="main floor half half_floor" bash bench/run.sh   # only the floor and the latency bars
#   BUILD_REV=HEAD bash bench/run.sh        # measure the committed tree, not the working tree's edits
#
# What it does, in order (everything on 127.0.0.1, every process it starts is stopped by PID):
#   1. checks the tools (nginx, libnginx-mod-http-echo, wrk, curl, python3, openssl, taskset, ss, haproxy; redis-server
#      and redis-cli for the redis pass): installs nothing, prints the apt-get line and exits 1 when one is missing;
#   2. builds the release binary into ${CARGO_TARGET_DIR:-target} (BUILD_REV: from `git archive BUILD_REV` in
#      $SCRATCH/src, into ${CARGO_TARGET_DIR:-$SCRATCH/target}) and, for the floor passes, the floor
#      (`cargo build --release --example floor`: bench/floor.rs, a bare actix-web + awc reverse proxy), and copies
#      both to $SCRATCH/bin, so that a rebuild in the checkout during the run cannot swap a binary between passes;
#   3. writes a real gateway config into $SCRATCH: upstream.mode = "vidu" against the mock Vidu on :18081, RS256
#      JWT with a fresh RSA 2048 key pair (openssl), the built-in catalog, admission on (user, team and global
#      rates, in-flight slots and day/month budgets, far too high to reject), the SQLite ledger in $SCRATCH,
#      log level warn, listening on 127.0.0.1:18090; mints a token with `vidu-gateway token --private-key` (RS256,
#      with `sub`, `team` and `exp`, checked here) that every target gets, haproxy_jwt verifying it with the same
#      public key; and the same config with `[state] backend = "redis"` (gateway-redis.toml) for the redis pass;
#   4. start-to-ready time (spawn until /readyz answers 200, polled every 5 ms, median of START_RUNS starts) and
#      idle RSS, with a fresh ledger (bench/start_ready.py);
#   5. the harness (../shared/bench/bench.sh, staged into $SCRATCH/harness with bench/post.lua, the readiness
#      probe fix and EXTRA_SERVER_PIDS described in bench/README.md) once per pass, each starting and stopping
#      mock Vidu, nginx and the gateway (or the floor):
#        main   small img2video requests (URL image) at 1, 16 and 64 connections (direct, nginx, haproxy_jwt,
#               gateway); a 15 MiB data-URI request at 4 connections (direct, nginx, nginx streaming, nginx
#               in-memory buffering, haproxy_jwt, gateway). haproxy_jwt (the harness's PEER_JWT_PUBKEY) is HAProxy
#               2.6 checking the token's RS256 signature and exp, a per-sub rate table and a Content-Length cap
#        redis  small requests at 16 connections against the gateway configured as in main but with the Redis
#               state backend (gateway_redis; direct and nginx again, as a drift check against main): a
#               redis-server started here on a free loopback port (REDIS_PORT), pinned to SERVER_CPU with the
#               other servers, persistence off (--save "" --appendonly no), emptied before the pass and stopped
#               by PID right after it (and by the EXIT trap); its INFO after the pass goes to redis_info.txt
#        floor  the floor in the gateway's place (harness target "floor"): small requests at FLOOR_CONNS (1 16) and
#               the 15 MiB request at 4 connections (direct, nginx, floor; direct and nginx as a drift check)
#        quote  POST /gateway/v1/img2video/quote, small body, QUOTE_CONNS connections (direct/nginx rows are
#               their img2video answer, as a reference)
#        half   small requests at about half the gateway's peak throughput (think time per connection), for the
#               added-p99 bars
#        half_floor  the same, the floor in the gateway's place, at the SAME think time (right after half)
#        mem16  the 15 MiB request at 16 connections (direct, nginx, gateway), for the peak-RSS bar
#   6. start-to-ready again with the ledger the runs left behind;
#   7. prints one table (bench/summary.py): req/s, p50/p99/p99.9, peak RSS, own CPU per request, errors, the
#      ratios gateway/nginx, gateway/haproxy_jwt, gateway/floor and gateway/direct, own CPU per request and peak RSS
#      per 15 MiB request in flight of every target, start/idle figures, and the bars met or not.
#
# Environment (defaults in brackets):
#   QUICK [0]            1 = DURATION=3s REPEATS=1 START_RUNS=3, results not saved into the repo
#   DURATION [10s]  REPEATS [3]    passed to the harness (per measurement; targets interleaved per repetition)
#   PASSES [main redis floor quote half half_floor mem16]   the harness passes to run, in this order; main always
#                        runs (the others compare against it), e.g. PASSES="main redis" for the Redis-backend bar alone
#   QUOTE_CONNS [16]  HALF_CONNS [64]  START_RUNS [5]  MEM16 [1] (0 skips the 16 x 15 MiB run)  MEM16_REPEATS [1]
#   MAIN_CONNS ["1 16 64"]  small-request connection counts of the main pass (1: the added-p50 bar)
#   FLOOR_CONNS ["1 16"] small-request connections of the floor pass (1: the floor's added p50)
#   HAPROXY_JWT [1]      0 = leave haproxy_jwt out of the main pass (no haproxy needed; its bar is then not measured)
#   REDIS_CONNS [16]     connections of the redis pass
#   REDIS_CPU [SERVER_CPU]  the core redis-server is pinned to (the bar is measured with Redis on the servers' core;
#                        REDIS_CPU=0 puts it beside wrk instead, as a deployment's Redis on its own machine would be)
#   REDIS_PORT [a free loopback port]  REDIS_TIMEOUT_MS [200] (state.redis_timeout_ms of the redis pass: 200, not
#                        the default 50, so a scheduling hiccup on the shared server core is not an outage)
#   SKIP_BUILD [0]       1 = use the existing binaries
#   BUILD_REV []         a git revision (e.g. HEAD): build that committed tree instead of the working tree, for a
#                        checkout someone is editing meanwhile (the floor too, if that tree has bench/floor.rs;
#                        else the floor is built from the working tree)
#   BENCH_HARNESS [../shared/bench/bench.sh, relative to the repo root]
#   SCRATCH [${TMPDIR:-/tmp}/vidu-gateway-bench]   config, keys, ledger, logs, harness copy, raw results
#   SAVE [1, 0 when QUICK=1]   write the printed table to bench/results/latest.txt
#   GW_WORKERS [1]       server.workers of the gateway, and of the floor (nginx runs worker_processes 1; all servers
#                        share one core)
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
PASSES="${PASSES:-main redis floor quote half half_floor mem16}"
MAIN_CONNS="${MAIN_CONNS:-1 16 64}"
FLOOR_CONNS="${FLOOR_CONNS:-1 16}"
HAPROXY_JWT="${HAPROXY_JWT:-1}"
REDIS_CONNS="${REDIS_CONNS:-16}"
REDIS_PORT="${REDIS_PORT:-}"
REDIS_TIMEOUT_MS="${REDIS_TIMEOUT_MS:-200}"
SKIP_BUILD="${SKIP_BUILD:-0}"
BUILD_REV="${BUILD_REV:-}"
GW_WORKERS="${GW_WORKERS:-1}"
HARNESS="${BENCH_HARNESS:-../shared/bench/bench.sh}"
SCRATCH="${SCRATCH:-${TMPDIR:-/tmp}/vidu-gateway-bench}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
GW_PORT=18090
GW_URL="http://127.0.0.1:$GW_PORT"
export PIN="${PIN:-1}" SERVER_CPU="${SERVER_CPU:-1}"
pass_on() { [[ " $PASSES " == *" $1 "* ]]; }
for p in $PASSES; do
  case "$p" in main|redis|floor|quote|half|half_floor|mem16) ;;
    *) die "PASSES: unknown pass '$p' (main redis floor quote half half_floor mem16)" ;; esac
done

# Processes this script starts itself (redis-server); the harness stops its own. Stopped by PID, never by name.
STARTED=()
stop_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { log "pid $pid ignored TERM, sending KILL"; kill -KILL "$pid" 2>/dev/null || true; }
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$? pid
  for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ 1. tools (nothing is installed)
missing=()
for bin in nginx wrk curl python3 openssl taskset ss; do command -v "$bin" >/dev/null 2>&1 || missing+=("$bin"); done
[[ -f /usr/lib/nginx/modules/ngx_http_echo_module.so ]] || missing+=("libnginx-mod-http-echo")
if pass_on redis; then
  for bin in redis-server redis-cli; do command -v "$bin" >/dev/null 2>&1 || missing+=("$bin"); done
fi
[[ "$HAPROXY_JWT" != 1 ]] || command -v haproxy >/dev/null 2>&1 || missing+=("haproxy")
[[ "$SKIP_BUILD" == 1 ]] || command -v cargo >/dev/null 2>&1 || missing+=("cargo (https://rustup.rs)")
if (( ${#missing[@]} )); then
  log "missing: ${missing[*]}"
  echo "install the benchmark's tools (Debian/Ubuntu packages), then rerun:" >&2
  echo "  sudo apt-get install -y nginx libnginx-mod-http-echo wrk curl python3 openssl util-linux iproute2 redis-server haproxy" >&2
  [[ " ${missing[*]} " == *" redis-"* ]] && echo "(or leave the redis pass out: PASSES=\"main floor quote half half_floor mem16\")" >&2
  [[ " ${missing[*]} " == *" haproxy "* ]] && echo "(or leave haproxy_jwt out: HAPROXY_JWT=0)" >&2
  exit 1
fi
[[ -f "$HARNESS" ]] || die "harness not found at $HARNESS (set BENCH_HARNESS to ../shared/bench/bench.sh's path)"
HARNESS="$(cd "$(dirname "$HARNESS")" && pwd)/$(basename "$HARNESS")"
[[ -z "$(ss -ltnH "sport = :$GW_PORT")" ]] || die "port $GW_PORT already in use; stop that process first"

# ------------------------------------------------------------------ 2. build
mkdir -p "$SCRATCH"
SCRATCH="$(cd "$SCRATCH" && pwd)"
[[ "$SCRATCH" != *' '* ]] || die "SCRATCH must not contain spaces (the harness runs GATEWAY_CMD through bash -c)"
# The source the binary is built from (read before the build: another checkout may change meanwhile).
SRC_DIR="$ROOT"
if [[ -n "$BUILD_REV" ]]; then
  REV="$(git rev-parse --verify "$BUILD_REV^{commit}")" || die "BUILD_REV=$BUILD_REV is not a commit"
  GIT_DESC="$(git rev-parse --short "$REV") (BUILD_REV=$BUILD_REV, committed tree)"
  SRC_DIR="$SCRATCH/src"
  TARGET_DIR="${CARGO_TARGET_DIR:-$SCRATCH/target}"
  if [[ "$SKIP_BUILD" != 1 ]]; then
    rm -rf "$SRC_DIR"; mkdir -p "$SRC_DIR"
    git archive "$REV" | tar -x -C "$SRC_DIR"
  fi
else
  GIT_DESC="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock bench/floor.rs 2>/dev/null || echo '+local changes')"
fi
mkdir -p "$TARGET_DIR"
TARGET_DIR="$(cd "$TARGET_DIR" && pwd)"
if [[ "$SKIP_BUILD" != 1 ]]; then
  log "building the release binary from $SRC_DIR into $TARGET_DIR (cargo build --release)"
  (cd "$SRC_DIR" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --quiet)
fi
[[ -x "$TARGET_DIR/release/vidu-gateway" ]] || die "no binary at $TARGET_DIR/release/vidu-gateway"
mkdir -p "$SCRATCH/bin"
cp "$TARGET_DIR/release/vidu-gateway" "$SCRATCH/bin/vidu-gateway.tmp"
mv "$SCRATCH/bin/vidu-gateway.tmp" "$SCRATCH/bin/vidu-gateway"
BIN="$SCRATCH/bin/vidu-gateway"
# The floor (bench/floor.rs), for the floor and half_floor passes: a separate cargo invocation, so that the gateway's
# binary is exactly what `cargo build --release` makes (an example pulls in the dev-dependencies' features).
FLOOR_BIN=""
if pass_on floor || pass_on half_floor; then
  FLOOR_SRC="$SRC_DIR" FLOOR_TARGET="$TARGET_DIR"
  if [[ ! -f "$FLOOR_SRC/bench/floor.rs" ]]; then   # BUILD_REV older than the floor: the working tree's
    FLOOR_SRC="$ROOT" FLOOR_TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
    log "$BUILD_REV has no bench/floor.rs: the floor is built from the working tree"
  fi
  if [[ "$SKIP_BUILD" != 1 ]]; then
    log "building the floor from $FLOOR_SRC into $FLOOR_TARGET (cargo build --release --example floor)"
    (cd "$FLOOR_SRC" && CARGO_TARGET_DIR="$FLOOR_TARGET" cargo build --release --example floor --quiet)
  fi
  [[ -x "$FLOOR_TARGET/release/examples/floor" ]] \
    || die "no floor binary at $FLOOR_TARGET/release/examples/floor (cargo build --release --example floor)"
  cp "$FLOOR_TARGET/release/examples/floor" "$SCRATCH/bin/floor.tmp"
  mv "$SCRATCH/bin/floor.tmp" "$SCRATCH/bin/floor"
  FLOOR_BIN="$SCRATCH/bin/floor"
fi

# ------------------------------------------------------------------ 3. scratch: keys, config, harness, token
rm -rf "$SCRATCH/results" "$SCRATCH/harness" "$SCRATCH"/ledger.sqlite3* "$SCRATCH"/spool.sqlite3* "$SCRATCH/logs" "$SCRATCH/redis"
mkdir -p "$SCRATCH/results" "$SCRATCH/logs"
# RS256: what haproxy_jwt can verify (HAProxy 2.6's jwt_verify takes the same public key file); every target gets
# the same token.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$SCRATCH/rs256.key.pem" 2>/dev/null \
  || die "openssl could not generate an RSA key"
openssl pkey -in "$SCRATCH/rs256.key.pem" -pubout -out "$SCRATCH/rs256.pub.pem" 2>/dev/null
PUBKEY="$SCRATCH/rs256.pub.pem"
CFG="$SCRATCH/gateway.toml"
CFG_REDIS="$SCRATCH/gateway-redis.toml"
HIGH_RATE=100000000        # requests per minute and burst: never reached
HIGH_SLOTS=100000          # concurrent requests
HIGH_CREDITS=1000000000000 # credits per day / month (a small create reserves a few dozen: ~10^7 per pass)
if [[ -z "$REDIS_PORT" ]] && pass_on redis; then   # a free loopback port, outside the harness's 18080-18090
  REDIS_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
write_config() {    # file, then the [state] table's lines: the same gateway but for its state backend
  local file=$1; shift
  cat >"$file" <<EOF
# Written by bench/run.sh: the real request path (RS256 JWT, validation against the built-in catalog, pricing,
# policy, admission with the state backend of [state], forwarding with awc) against the mock Vidu of the harness.
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
algorithms = ["RS256"]
public_key_files = ["$PUBKEY"]

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
$(printf '%s\n' "$@")

[telemetry]
log_format = "json"
log_level = "warn"
EOF
  "$BIN" check-config --config "$file" >/dev/null 2>"$SCRATCH/logs/check-config.txt" \
    || { cat "$SCRATCH/logs/check-config.txt" >&2; die "the generated config $file is invalid"; }
}
write_config "$CFG" 'backend = "memory"' "ledger_path = \"$SCRATCH/ledger.sqlite3\""
# The redis pass: the same limits (so the same buckets are checked: 3 slots, 3 rates, 6 budgets), state in Redis.
# Each admitted create is two round trips (admission script before forwarding, settlement script after).
if pass_on redis; then
  write_config "$CFG_REDIS" 'backend = "redis"' "redis_url = \"redis://127.0.0.1:$REDIS_PORT/0\"" \
    'key_prefix = "bench"' "redis_timeout_ms = $REDIS_TIMEOUT_MS" 'on_unavailable = "fail_closed"' \
    "ledger_path = \"$SCRATCH/ledger-unused.sqlite3\"" "spool_path = \"$SCRATCH/spool.sqlite3\""
fi
TOKEN="$("$BIN" token --config "$CFG" --sub bench --team perf --ttl 86400 --private-key "$SCRATCH/rs256.key.pem")"
[[ "$TOKEN" == eyJ* ]] || die "could not mint a token"
# haproxy_jwt needs alg RS256 (it denies any other), a `sub` (its rate table's key) and an `exp` in the future (it
# denies an expired one; a token WITHOUT exp it would let through, so check here that the token has one).
TOKEN_CLAIMS="$(python3 - "$TOKEN" <<'PY'
import base64, json, sys, time
def part(i):
    s = sys.argv[1].split('.')[i]
    return json.loads(base64.urlsafe_b64decode(s + '=' * (-len(s) % 4)))
h, p = part(0), part(1)
bad = [w for w, ok in (('alg RS256', h.get('alg') == 'RS256'), ('sub', bool(p.get('sub'))),
                       ('exp in the future', isinstance(p.get('exp'), int) and p['exp'] > time.time())) if not ok]
print('alg=%s sub=%s team=%s exp=+%ss' % (h.get('alg'), p.get('sub'), p.get('team'), int(p.get('exp', 0) - time.time()))
      + (' MISSING: ' + ', '.join(bad) if bad else ''))
PY
)"
[[ "$TOKEN_CLAIMS" != *MISSING* ]] || die "the minted token does not suit haproxy_jwt: $TOKEN_CLAIMS"
log "token: $TOKEN_CLAIMS"

# Staged copy of the harness: its own files, plus bench/post.lua (p99.9, think time), a readiness probe that
# posts the small img2video request (the harness probes with '{"ping":1}', which a validating gateway answers 400),
# and EXTRA_SERVER_PIDS: processes counted as servers (redis-server in the redis pass), so that their CPU is in the
# servers' CPU per request and not taken for foreign load (which would trigger retries and warnings).
H="$SCRATCH/harness"
mkdir -p "$H"
cp -r "$(dirname "$HARNESS")/conf" "$(dirname "$HARNESS")/lua" "$H/"
cp "$HARNESS" "$H/bench.sh"
cp "$ROOT/bench/post.lua" "$H/lua/post.lua"
# The mock Vidu answers every create with a fresh, increasing task id ("<ms since the epoch>-<connection>-<request
# on it>", like Vidu's own ids: unique and growing over time) that has already ended ("state":"success"), instead of
# the same "123" in state "created". A real Vidu never hands out a task id twice (a repeated one sends the gateway
# down its "task id already owned" path: an ERROR line and a refused task row per create), and its tasks end within
# minutes; tasks that never end pile up (the gateway keeps every unfinished task's record and running-task slot:
# ~600 000 of them after a run). So each create is recorded and ended: the per-task writes a real task costs, minus
# the later callback. Every target gets the same answer.
sed -i 's/"task_id":"123","state":"created"/"task_id":"$msec-$connection-$connection_requests","state":"success"/g' \
  "$H/conf/upstream.conf"
grep -q '"task_id":"$msec-$connection-$connection_requests","state":"success"' "$H/conf/upstream.conf" \
  || die "could not give the mock Vidu fresh task ids (its answer changed in $(dirname "$HARNESS")/conf/upstream.conf?)"
if grep -q "\-d '{\"ping\":1}'" "$H/bench.sh"; then
  sed -i "s|-d '{\"ping\":1}'|-d \"\$SMALL_BODY\"|" "$H/bench.sh"
fi
sed -i 's|^server_pids() { echo "\$UP_WORKER";|server_pids() { echo "$UP_WORKER"; [[ -z "${EXTRA_SERVER_PIDS:-}" ]] \|\| printf "%s\\n" $EXTRA_SERVER_PIDS;|' \
  "$H/bench.sh"
if pass_on redis && ! grep -q 'EXTRA_SERVER_PIDS' "$H/bench.sh"; then
  die "could not add EXTRA_SERVER_PIDS to the staged harness (server_pids() changed in $HARNESS?)"
fi

# And per-thread CPU of each target process (name and utime+stime ticks of every thread, before and after each
# measurement: raw/<scenario>.<target>.r<rep>.txt.threads0/1), so the summary can split the gateway's own CPU per
# request between its worker and its ledger threads. Optional: without it the summary prints no split.
sed -i 's|^run_one() {|thread_ticks() { local p t; for p in "$@"; do for t in /proc/$p/task/*; do printf "%s\\t%s\\n" "$(cat $t/comm)" "$(sed "s/.*) //" $t/stat \| awk "{print \\$12+\\$13}")"; done; done 2>/dev/null; }\nrun_one() {|' "$H/bench.sh"
sed -i 's|^\(  u0=$(proc_ticks "$UP_WORKER"); f0=$(ticks_of $fp).*\)$|\1; thread_ticks $fp >"$raw.threads0"|; s|^\(  u1=$(proc_ticks "$UP_WORKER"); f1=$(ticks_of $fp).*\)$|\1; thread_ticks $fp >"$raw.threads1"|' "$H/bench.sh"
grep -q 'raw.threads1' "$H/bench.sh" || log "note: could not add per-thread CPU to the staged harness (run_one() changed in $HARNESS?): no split of the gateway's CPU"

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
# haproxy_jwt (PEER_JWT_PUBKEY) beside direct and nginx: the same token, verified with the gateway's public key.
PEER=(); [[ "$HAPROXY_JWT" == 1 ]] && PEER=(PEER_JWT_PUBKEY="$PUBKEY")
harness main GATEWAY_URL="$GW_URL" SMALL_CONNS="$MAIN_CONNS" LARGE_SIZES="15m" LARGE_CONNS=4 "${PEER[@]}"
MAIN="$RESULT_DIR"
RUNS=(--run "main=$MAIN")

# The Redis backend, right after main (least drift): its own redis-server on SERVER_CPU beside the mock, nginx and
# the gateway, persistence off, empty at the start of the pass (the budgets, 10^12 credits, cannot fill up in one
# pass: its largest counter is checked below), stopped by PID right after.
if pass_on redis; then
  [[ -z "$(ss -ltnH "sport = :$REDIS_PORT")" ]] || die "REDIS_PORT $REDIS_PORT already in use"
  mkdir -p "$SCRATCH/redis"
  REDIS_PIN=(); [[ "$PIN" == 1 ]] && REDIS_PIN=(taskset -c "${REDIS_CPU:-$SERVER_CPU}")
  LOADGEN_PIN=(); [[ "$PIN" == 1 ]] && LOADGEN_PIN=(taskset -c "${LOADGEN_CPU:-0}")
  [[ "${NICE:-0}" != 0 ]] && REDIS_PIN=(nice -n "$NICE" "${REDIS_PIN[@]}")
  "${REDIS_PIN[@]}" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
      --daemonize no --dir "$SCRATCH/redis" --logfile "$SCRATCH/logs/redis-server.log" >/dev/null 2>&1 &
  REDIS_PID=$!
  STARTED+=("$REDIS_PID")
  rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
  for _ in $(seq 100); do [[ "$(rcli ping 2>/dev/null)" == PONG ]] && break; sleep 0.05; done
  [[ "$(rcli ping 2>/dev/null)" == PONG ]] || die "redis-server did not answer on :$REDIS_PORT (log: $SCRATCH/logs/redis-server.log)"
  rcli flushall >/dev/null
  rcli config resetstat >/dev/null
  log "redis-server $(redis-server --version | grep -o 'v=[0-9.]*') pid=$REDIS_PID on 127.0.0.1:$REDIS_PORT, affinity=$(taskset -p "$REDIS_PID" | awk '{print $NF}'), persistence off"
  harness redis GATEWAY_URL="$GW_URL" SMALL_CONNS="$REDIS_CONNS" LARGE_SIZES="" \
      GATEWAY_CMD="$BIN serve --config $CFG_REDIS" GATEWAY_NAME=gateway_redis EXTRA_SERVER_PIDS="$REDIS_PID"
  {
    echo "redis_version $(redis-server --version | grep -o 'v=[0-9.]*' | cut -d= -f2)"
    echo "port $REDIS_PORT"
    echo "persistence off (--save \"\" --appendonly no)"
    echo "redis_timeout_ms $REDIS_TIMEOUT_MS"
    echo "redis_cpu ${REDIS_CPU:-$SERVER_CPU} server_cpu $SERVER_CPU"
    echo "budget_limit $HIGH_CREDITS"
    echo "dbsize $(rcli dbsize)"
    # the largest budget counter (credits reserved + settled in one day/month bucket) after the pass
    mx=0
    while read -r k; do
      [[ -n "$k" ]] || continue
      v="$(rcli get "$k")"; [[ "$v" =~ ^-?[0-9]+$ ]] && (( v > mx )) && mx=$v
    done < <(rcli --scan --pattern '{bench}:b:*')
    echo "budget_max_used $mx"
    rcli info commandstats | tr -d '\r' | grep '^cmdstat_'
    rcli info cpu | tr -d '\r' | grep '^used_cpu_'
    rcli info memory | tr -d '\r' | grep -E '^used_memory:|^used_memory_peak:'
  } >"$RESULT_DIR/redis_info.txt" 2>&1 || true
  # The floor of any script-per-decision design on this layout: what redis-server spends on one EVALSHA round trip
  # of a script that does nothing (2 KiB of arguments, as an admission's), and on each redis.call inside a script,
  # from redis-benchmark at 16 connections (wrk's core), by redis-server's CPU time. The gateway is stopped by now.
  if command -v redis-benchmark >/dev/null; then
    redis_floor() {   # label script
      local sha t0 t1 n=100000
      sha="$(rcli script load "$2")"
      t0="$(awk '{print $14+$15}' "/proc/$REDIS_PID/stat")"
      "${LOADGEN_PIN[@]}" redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c 16 -n "$n" -q \
          evalsha "$sha" 0 "$(head -c 2048 /dev/zero | tr '\0' 'a')" >/dev/null 2>&1
      t1="$(awk '{print $14+$15}' "/proc/$REDIS_PID/stat")"
      echo "$1 $(awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n=$n 'BEGIN{printf "%.2f", d * 1e6 / hz / n}')"
    }
    {
      redis_floor floor_evalsha_us 'return 1'
      redis_floor floor_20_incrby_us "for i = 1, 20 do redis.call('INCRBY', 'floor:' .. i, '5') end return 1"
    } >>"$RESULT_DIR/redis_info.txt" 2>&1 || true
  fi
  stop_pid "$REDIS_PID"
  log "redis-server stopped; $(grep -E '^(dbsize|budget_max_used)' "$RESULT_DIR/redis_info.txt" | tr '\n' ' ')"
  RUNS+=(--run "redis=$RESULT_DIR")
fi

# The floor: bench/floor.rs (a bare actix-web + awc proxy, one worker, mimalloc) in the gateway's place on the same
# port, the same harness and layout; its direct and nginx rows are a drift check against main. The gateway gives
# the floor the same token (it ignores it); the harness exports UPSTREAM_URL, the mock's address.
FLOOR_CMD="env FLOOR_WORKERS=$GW_WORKERS $FLOOR_BIN 127.0.0.1:$GW_PORT"
if pass_on floor; then
  harness floor GATEWAY_URL="$GW_URL" SMALL_CONNS="$FLOOR_CONNS" LARGE_SIZES="15m" LARGE_CONNS=4 NGINX_VARIANTS=0 \
      GATEWAY_CMD="$FLOOR_CMD" GATEWAY_NAME=floor
  RUNS+=(--run "floor=$RESULT_DIR")
fi

if pass_on quote; then
  # The quote: the harness appends REQ_PATH to GATEWAY_URL; a query string carries it off the quote path.
  harness quote GATEWAY_URL="$GW_URL/gateway/v1/img2video/quote?bench=" SMALL_CONNS="$QUOTE_CONNS" LARGE_SIZES=""
  RUNS+=(--run "quote=$RESULT_DIR")
fi

# Half of the gateway's peak (the best of the main run's small scenarios): HALF_CONNS connections with a think
# time; half_floor runs the floor at the same think time, so both are measured at the same offered load.
DELAY_MS=""
if pass_on half || pass_on half_floor; then
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
fi
if pass_on half; then
  harness half GATEWAY_URL="$GW_URL" SMALL_CONNS="$HALF_CONNS" LARGE_SIZES="" DELAY_MS="$DELAY_MS"
  RUNS+=(--run "half=$RESULT_DIR")
fi
if pass_on half_floor; then
  harness half_floor GATEWAY_URL="$GW_URL" SMALL_CONNS="$HALF_CONNS" LARGE_SIZES="" DELAY_MS="$DELAY_MS" \
      GATEWAY_CMD="$FLOOR_CMD" GATEWAY_NAME=floor
  RUNS+=(--run "half_floor=$RESULT_DIR")
fi

if [[ "$MEM16" == 1 ]] && pass_on mem16; then
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
  echo "DURATION=$DURATION REPEATS=$REPEATS (mem16: $MEM16_REPEATS) QUOTE_CONNS=$QUOTE_CONNS$( [[ -n "$DELAY_MS" ]] && echo " half load: $HALF_CONNS conns, $DELAY_MS ms mean think time"); passes: $PASSES$( [[ "$MEM16" != 1 ]] && echo ' (MEM16=0)')"
  echo "auth: RS256 (RSA 2048 key pair from openssl), one token for every target ($TOKEN_CLAIMS)$( [[ "$HAPROXY_JWT" == 1 ]] && echo "; haproxy_jwt: $(haproxy -v 2>/dev/null | head -1 | awk '{print "HAProxy", $3}') (shared conf/haproxy_jwt.cfg, nbthread 1)")"
  { pass_on floor || pass_on half_floor; } && echo "floor: bench/floor.rs (actix-web + awc, workers=$GW_WORKERS, mimalloc, no auth/validation/state)$(pass_on floor && echo ", floor pass: small c=$FLOOR_CONNS and 15 MiB c=4")$(pass_on half_floor && echo ", half_floor pass at the half pass's think time")"
  pass_on redis && echo "redis pass: $REDIS_CONNS conns, redis-server $(redis-server --version | grep -o 'v=[0-9.]*' | cut -d= -f2) on CPU $SERVER_CPU with the other servers, persistence off (--save \"\" --appendonly no), state.redis_timeout_ms=$REDIS_TIMEOUT_MS"
  echo "command: $(for v in QUICK PASSES MEM16 BUILD_REV DURATION REPEATS MAIN_CONNS FLOOR_CONNS HALF_CONNS HAPROXY_JWT; do val="$(printenv "$v" || true)"; [[ -z "$val" ]] || { [[ "$val" == *' '* ]] && printf '%s="%s" ' "$v" "$val" || printf '%s=%s ' "$v" "$val"; }; done)bash bench/run.sh"
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
