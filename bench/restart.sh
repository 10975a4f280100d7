#!/usr/bin/env bash
# Graceful restart of meshd itself (SIGUSR2; docs/operations.md, "Upgrading
# meshd"):
# (a) the time from SIGUSR2 to the new process serving, with 1 and TENANTS
#     apps and a warm compile cache: a Python poller sends SIGUSR2 to the
#     serving meshd and then asks the admin API's GET /healthz back to back
#     (one keep-alive connection, reopened when the old process closes it)
#     until the pid it reports is the new one. RESTARTS samples each; the
#     `took=` of the old process's "new meshd process is ready" line (from
#     starting the new process to its ready line) is reported beside it.
# (b) throughput of one app (hello) over DURATION, without restarts, then
#     while meshd restarts itself every RESTART_INTERVAL seconds for the whole
#     measurement (wrk keeps its connections; the old process answers each
#     one's next request with `Connection: close`).
#
#   bash bench/restart.sh
#
# Environment (all optional):
#   TENANTS           apps in the big configuration of (a)     (default 1000)
#   RESTARTS          timed restarts per configuration of (a)  (default 5)
#   DURATION          wrk measurement in (b)                   (default 10s)
#   WARMUP            wrk warm-up in (b)                       (default 2s)
#   CONNECTIONS       wrk connections in (b)                   (default 32)
#   THREADS           wrk threads in (b)                       (default 1)
#   RESTART_INTERVAL  seconds between restarts in (b)          (default 2)
#   BENCH_OUT         also write the result tables (markdown) to this file
#   MESHD, MESHD_LABEL, MESHD_PROFILE  as in bench/rps.sh (MESHD_PROFILE=release
#                     measures target/release/meshd)
#
# Every server listens on 127.0.0.1 only; all load is bounded in time or count.

set -euo pipefail
BENCH_NAME=restart
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TENANTS="${TENANTS:-1000}"
RESTARTS="${RESTARTS:-5}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-1}"
RESTART_INTERVAL="${RESTART_INTERVAL:-2}"
((TENANTS >= 1 && TENANTS <= 10000)) || die "TENANTS must be 1..10000"

need_tools
need_guests hello
find_meshd
check_idle_machine

# The admin API's port: free now, bound by meshd just after.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The pid GET /healthz reports.
serving_pid() { curl -fsS "http://$ADMIN/healthz" | sed -n 's/.*"pid":\([0-9]*\).*/\1/p'; }

# restart_and_time: SIGUSR2 to the serving meshd; prints the seconds until
# GET /healthz answers from another pid, and sets MESHD_PID to it.
restart_and_time() {
    python3 - "$ADMIN" <<'EOF'
import http.client, json, os, signal, sys, time
host, port = sys.argv[1].split(":")
def pid(conn):
    conn.request("GET", "/healthz")
    return json.loads(conn.getresponse().read())["pid"]
conn = http.client.HTTPConnection(host, int(port), timeout=10)
old = pid(conn)
start = time.monotonic()
os.kill(old, signal.SIGUSR2)
while True:
    try:
        now = pid(conn)
    except (OSError, http.client.HTTPException):
        conn.close()
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        continue
    if now != old:
        print(f"{time.monotonic() - start:.4f} {now}")
        break
    if time.monotonic() - start > 600:
        sys.exit("no new process within 600 s")
EOF
}

# start_config NAME N: a fresh meshd serving N copies of hello (app0000...),
# its cache warmed by a first start.
start_config() {
    local name="$1" n="$2" dir="$WORK/$1" i
    mkdir -p "$dir/apps"
    for ((i = 0; i < n; i++)); do
        cp "$GUESTS/hello.wasm" "$dir/apps/$(printf 'app%04d' "$i").wasm"
    done
    ADMIN="$HOST:$(free_port)"
    local args=(--apps "$dir/apps" --cache-dir "$dir/cache" --data-dir "$dir/data" --admin "$ADMIN")
    start_meshd "$dir/warm.log" "${args[@]}"
    stop_meshd
    start_meshd "$dir/meshd.log" "${args[@]}"
    LOG="$dir/meshd.log"
    log "$name: $(grep -o 'apps=[0-9]* failed=[0-9]*' "$LOG" | head -n1), listening after ${MESHD_STARTUP} s"
}

declare -A SAMPLES TOOK
time_restarts() {
    local name="$1" n="$2" k line seconds pid
    start_config "$name" "$n"
    SAMPLES[$name]=""
    for ((k = 1; k <= RESTARTS; k++)); do
        read -r seconds pid < <(restart_and_time)
        MESHD_PID="$pid"
        SAMPLES[$name]+="$seconds "
        line="$(grep 'the new meshd process is ready' "$LOG" | tail -n1)"
        TOOK[$name]+="$(sed -n 's/.*took=\([0-9.a-zµ]*\).*/\1/p' <<<"$line") "
        log "$name: restart $k: $(awk -v s="$seconds" 'BEGIN { printf "%.1f", s * 1000 }') ms to the new process (pid $pid); took=$(sed -n 's/.*took=\([0-9.a-zµ]*\).*/\1/p' <<<"$line")"
        sleep 1
    done
    grep -q 'graceful restart failed' "$LOG" && die "$name: a restart failed (see $LOG)"
    stop_meshd
}

# median / max of the samples, in ms.
stat_ms() {
    tr ' ' '\n' <<<"$1" | grep . | sort -g |
        awk '{ v[NR] = $1 * 1000 } END {
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.1f %.1f", m, v[NR] }'
}

time_restarts one 1
time_restarts many "$TENANTS"

# (b) throughput without and with restarts.
start_config load 1
URL="http://$MESHD_ADDR/app0000/"
log "load: warm-up"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$URL" >/dev/null
measure steady "$URL" -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION"
(
    while true; do
        sleep "$RESTART_INTERVAL"
        pid="$(serving_pid)" && [[ -n "$pid" ]] && kill -USR2 "$pid"
    done
) &
BG_PIDS+=($!)
before="$(grep -c 'the new meshd process is ready' "$LOG" || true)"
measure restarting "$URL" -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION"
stop_background
sleep 2
after="$(grep -c 'the new meshd process is ready' "$LOG" || true)"
MESHD_PID="$(serving_pid)"
RESTARTED=$((after - before))
grep -q 'graceful restart failed' "$LOG" && die "a restart failed during the load (see $LOG)"
status=0
check_results steady restarting || status=1

read -r one_med one_max <<<"$(stat_ms "${SAMPLES[one]}")"
read -r many_med many_max <<<"$(stat_ms "${SAMPLES[many]}")"
report="$(
    machine_lines
    echo
    echo "| apps (warm cache) | SIGUSR2 to the new process serving, median | max | restarts | took= (spawn to ready), each |"
    echo "|---|---|---|---|---|"
    echo "| 1 | ${one_med} ms | ${one_max} ms | $RESTARTS | ${TOOK[one]}|"
    echo "| $(thousands "$TENANTS") | ${many_med} ms | ${many_max} ms | $RESTARTS | ${TOOK[many]}|"
    echo
    echo "| load (hello, wrk -t$THREADS -c$CONNECTIONS, $DURATION) | req/s | p50 | p99 | non-2xx | socket errors | other CPU |"
    echo "|---|---|---|---|---|---|---|"
    echo "| no restart | ${RPS[steady]} | ${P50[steady]} ms | ${P99[steady]} ms | ${NON2XX[steady]} | ${SOCKERR[steady]} | ${OTHER[steady]}% |"
    echo "| a restart every ${RESTART_INTERVAL} s ($RESTARTED in all) | ${RPS[restarting]} | ${P50[restarting]} ms | ${P99[restarting]} ms | ${NON2XX[restarting]} | ${SOCKERR[restarting]} | ${OTHER[restarting]}% |"
    echo
    echo "throughput during restarts / without: $(ratio "${RPS[restarting]}" "${RPS[steady]}")"
)"
echo "$report"
[[ -n "${BENCH_OUT:-}" ]] && echo "$report" >"$BENCH_OUT"
summary_row "graceful restart, SIGUSR2 to serving, 1 app / $TENANTS apps (median)" "${one_med} / ${many_med} ms" "(measured)" "-"
r="$(ratio "${RPS[restarting]}" "${RPS[steady]}")"
summary_row "req/s while restarting every ${RESTART_INTERVAL} s / without" "${r}x" ">= 0.9x" \
    "$(awk -v r="$r" 'BEGIN { print (r + 0 >= 0.9 ? "yes" : "no") }')"
exit "$status"
