#!/usr/bin/env bash
# What the access log costs: meshd serving hello with `--access-log off`
# against the same binary with `--access-log FILE` (JSON lines to a file on
# disk), in one run, alternating the two ROUNDS times, with each round's
# ratio and the median.
#
#   bash bench/access_log.sh
#
# Environment (all optional):
#   ROUNDS       alternating off/on pairs                     (default 3)
#   DURATION     wrk measurement of each                      (default 10s)
#   WARMUP       wrk warm-up of each                          (default 2s)
#   CONNECTIONS  wrk connections                              (default 32)
#   THREADS      wrk threads                                  (default 1)
#   BENCH_OUT    also write the result table (markdown) to this file
#   MESHD, MESHD_LABEL, MESHD_PROFILE  as in bench/rps.sh
#
# meshd listens on 127.0.0.1 only; all load is bounded in time.
set -euo pipefail
BENCH_NAME=access-log
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-1}"

need_tools
find_meshd
need_guests hello
check_idle_machine

mkdir -p "$WORK/apps"
cp "$GUESTS/hello.wasm" "$WORK/apps/hello.wasm"
ARGS=(--apps "$WORK/apps" --cache-dir "$WORK/cache" --data-dir "$WORK/data" --log-format json)

# run NAME ARGS...: one meshd, warmed up, then measured.
run() {
    local name="$1"
    shift
    start_meshd "$WORK/$name.log" "${ARGS[@]}" "$@"
    local url="http://$MESHD_ADDR/hello/"
    [[ "$(curl -fsS --max-time 2 "$url")" == "Hello from Steelmesh!" ]] || die "$url does not answer the greeting"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$url" >/dev/null
    measure "$name" "$url" -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION"
    stop_meshd
}

NAMES=()
for ((round = 1; round <= ROUNDS; round++)); do
    rm -f "$WORK/access.log"
    run "off-$round" --access-log off
    run "on-$round" --access-log "$WORK/access.log"
    lines="$(wc -l <"$WORK/access.log")"
    # Every request measured (and warmed up, and the greeting) has its line,
    # unless the writer fell behind and dropped some.
    log "round $round: $lines access-log lines for $(( REQS[on-$round] )) measured requests (plus warm-up)"
    ((lines >= REQS[on-$round])) || log "warning: fewer lines than requests: the writer dropped lines"
    NAMES+=("off-$round" "on-$round")
done

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

report() {
    machine_lines
    echo "load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency on /hello/ (after a $WARMUP warm-up), fresh instance per request; the access log as JSON lines to a file in $WORK"
    echo
    echo "| round | access log | req/s | p50 (ms) | p99 (ms) | non-2xx | socket errors | other CPU load |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    local round name ratios=()
    for ((round = 1; round <= ROUNDS; round++)); do
        for name in "off-$round" "on-$round"; do
            echo "| $round | ${name%-*} | $(thousands "${RPS[$name]}") | ${P50[$name]} | ${P99[$name]} | ${NON2XX[$name]} | ${SOCKERR[$name]} | ${OTHER[$name]}% |"
        done
        ratios+=("$(ratio "${RPS[on-$round]}" "${RPS[off-$round]}")")
    done
    echo
    echo "on / off req/s per round: ${ratios[*]}; median **$(median "${ratios[@]}")**"
}

report | tee "${BENCH_OUT:-/dev/null}"
check_results "${NAMES[@]}"
