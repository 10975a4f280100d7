#!/usr/bin/env bash
# Tenant isolation under CPU abuse: the throughput and latency of a
# well-behaved tenant (hello) alone, then while a noisy tenant in the same
# meshd spins the CPU on every request until its deadline, in one run.
#
#   bash bench/noisy.sh
#
# One meshd (default flags) serves two apps: `hello` (apps-example/hello) at
# /hello/ and the `hostile` fixture as `noisy` at /noisy/, whose manifest sets
# `[limits] timeout = "2s"`; its `GET /spin` loops forever, so each such
# request holds a guest on the CPU until meshd tears it down at 2 s and answers
# 504. After a WARMUP of load on /hello/, wrk measures /hello/ alone; then
# NOISY_CLIENTS loops each send `curl /noisy/spin` back to back, starting
# NOISY_LEAD seconds before the same wrk measurement and going on until it
# ends (a request started just before the end finishes within 2 s more).
#
# Environment (all optional):
#   DURATION       wrk measurement                       (default 10s)
#   WARMUP         wrk warm-up before the first one      (default 2s)
#   CONNECTIONS    wrk connections                       (default 16)
#   THREADS        wrk threads                           (default 1)
#   NOISY_CLIENTS  concurrent spinning clients           (default 2)
#   NOISY_TIMEOUT  the noisy app's [limits] timeout      (default 2s)
#   NOISY_CPU      the noisy app's [limits] cpu, in cores (default: unset, so
#                  meshd's default applies: half its workers, rounded up)
#   NOISY_LEAD     seconds the noisy load runs before wrk starts (default 1)
#   BENCH_OUT      also write the result table (markdown) to this file
#   MESHD, MESHD_LABEL, MESHD_PROFILE  measure a given meshd binary, or the
#                  work tree built in another profile (as in bench/rps.sh)
#
# meshd listens on 127.0.0.1 only; all load is bounded in time.
set -euo pipefail
BENCH_NAME=noisy
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-16}"
THREADS="${THREADS:-1}"
NOISY_CLIENTS="${NOISY_CLIENTS:-2}"
NOISY_TIMEOUT="${NOISY_TIMEOUT:-2s}"
NOISY_CPU="${NOISY_CPU:-}"
NOISY_LEAD="${NOISY_LEAD:-1}"
[[ "$DURATION" =~ ^[0-9]+s$ ]] || die "DURATION must be whole seconds, like 10s"

need_tools
find_meshd
need_guests hello hostile
check_idle_machine

mkdir -p "$WORK/apps"
cp "$GUESTS/hello.wasm" "$WORK/apps/hello.wasm"
cp "$GUESTS/hostile.wasm" "$WORK/apps/noisy.wasm"
printf '[limits]\ntimeout = "%s"\n' "$NOISY_TIMEOUT" >"$WORK/apps/noisy.toml"
NOISY_LIMITS="timeout = \"$NOISY_TIMEOUT\""
if [[ -n "$NOISY_CPU" ]]; then
    printf 'cpu = %s\n' "$NOISY_CPU" >>"$WORK/apps/noisy.toml"
    NOISY_LIMITS="$NOISY_LIMITS, cpu = $NOISY_CPU"
fi
start_meshd "$WORK/meshd.log" --apps "$WORK/apps" --cache-dir "$WORK/cache" --data-dir "$WORK/data"
HELLO="http://$MESHD_ADDR/hello/"
NOISY="http://$MESHD_ADDR/noisy/spin"
[[ "$(curl -fsS --max-time 2 "$HELLO")" == "Hello from Steelmesh!" ]] || die "/hello/ does not answer the greeting"
[[ "$(curl -fsS --max-time 2 "http://$MESHD_ADDR/noisy/ok")" == "ok" ]] || die "/noisy/ok does not answer ok"

log "warming up /hello/ for $WARMUP"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$HELLO" >/dev/null
measure alone "$HELLO" -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION"

# The noisy clients: each sends GET /noisy/spin back to back until the end of
# the measurement, recording "status seconds" per request.
secs="${DURATION%s}"
end_ns=$(($(date +%s%N) + (NOISY_LEAD + secs) * 1000000000))
for i in $(seq "$NOISY_CLIENTS"); do
    (
        while (($(date +%s%N) < end_ns)); do
            curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 30 "$NOISY" || echo "000 0"
        done >"$WORK/noisy-$i.codes"
    ) &
    BG_PIDS+=($!)
done
log "noisy: $NOISY_CLIENTS clients looping GET /noisy/spin (timeout $NOISY_TIMEOUT); wrk starts in $NOISY_LEAD s"
sleep "$NOISY_LEAD"
measure noisy "$HELLO" -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION"
wait "${BG_PIDS[@]}"
BG_PIDS=()

cat "$WORK"/noisy-*.codes >"$WORK/noisy.codes"
NOISY_TOTAL="$(wc -l <"$WORK/noisy.codes")"
NOISY_504="$(awk '$1 == 504' "$WORK/noisy.codes" | wc -l)"
NOISY_OTHER="$(awk '$1 != 504 { print $1 }' "$WORK/noisy.codes" | sort | uniq -c | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')"
NOISY_TIME="$(awk '$1 == 504 { s += $2; n++; if ($2 > m) m = $2 } END { if (n) printf "mean %.2f s, max %.2f s", s / n, m; else print "n/a" }' "$WORK/noisy.codes")"
[[ "$(curl -fsS --max-time 2 "http://$MESHD_ADDR/noisy/ok")" == "ok" ]] || die "/noisy/ok no longer answers ok"
stop_meshd
log "noisy: $NOISY_TOTAL requests, $NOISY_504 answered 504 ($NOISY_TIME)${NOISY_OTHER:+; others: $NOISY_OTHER}"

# --- report ------------------------------------------------------------------

report() {
    machine_lines
    echo "load on /hello/: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (after a ${WARMUP} warm-up); noisy: $NOISY_CLIENTS curl loops on /noisy/spin ([limits] $NOISY_LIMITS), from ${NOISY_LEAD} s before wrk to its end"
    echo
    echo "| /hello/ | req/s | p50 (ms) | p99 (ms) | non-2xx | socket errors | other CPU load |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    echo "| alone | $(thousands "${RPS[alone]}") | ${P50[alone]} | ${P99[alone]} | ${NON2XX[alone]} | ${SOCKERR[alone]} | ${OTHER[alone]}% |"
    echo "| with the noisy tenant | $(thousands "${RPS[noisy]}") | ${P50[noisy]} | ${P99[noisy]} | ${NON2XX[noisy]} | ${SOCKERR[noisy]} | ${OTHER[noisy]}% |"
    echo
    echo "| ratio (with noisy / alone) | |"
    echo "|---|---:|"
    echo "| req/s | $(ratio "${RPS[noisy]}" "${RPS[alone]}") |"
    echo "| p50 | $(ratio "${P50[noisy]}" "${P50[alone]}") |"
    echo "| p99 | $(ratio "${P99[noisy]}" "${P99[alone]}") |"
    echo
    echo "noisy tenant: $NOISY_TOTAL requests to /noisy/spin, $NOISY_504 answered 504 ($NOISY_TIME)${NOISY_OTHER:+; other answers: $NOISY_OTHER}"
}

echo
report | tee "${BENCH_OUT:-/dev/null}"

failed=0
check_results alone noisy || failed=1
if ((NOISY_504 != NOISY_TOTAL)); then
    log "error: not every spinning request got 504: $NOISY_OTHER"
    failed=1
fi
exit "$failed"
