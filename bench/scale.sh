#!/usr/bin/env bash
# Density: one meshd with 1,000 tenants against one with a single tenant, in
# one run: (a) throughput and p50/p99 of one tenant, (b) start-up time with a
# warm compile cache, (c) resident memory, idle and after the load.
#
#   bash bench/scale.sh
#
# The tenants are TENANTS copies of apps-example/hello (hello.wasm) named
# app0000.wasm, app0001.wasm, ...; the single-tenant meshd has only the one
# measured, TARGET_APP (default app0500), so both serve the same name at the
# same route. Identical bytes have one content hash, so the compile cache
# holds one artifact for all of them; the log's `cache=` fields show it.
#
# For each configuration (1 tenant, then TENANTS tenants), with default flags
# and a fresh --cache-dir:
#   1. a first meshd fills the cache (its start-up time, cold, is shown too)
#      and is stopped;
#   2. a second meshd with the same --cache-dir is the one measured: start-up
#      time = from just before the process is started to the timestamp of its
#      `meshd listening on` log line; then VmRSS (/proc/PID/status) after
#      IDLE seconds without requests; then a WARMUP and a wrk measurement of
#      /TARGET_APP/; then VmRSS again.
#
# Targets compared against: TENANTS-tenant throughput >= 0.95x single,
# start-up <= 2 s, idle RSS <= 200 MB
# (MB = 10^6 bytes throughout).
#
# Environment (all optional):
#   TENANTS      how many tenants in the big configuration   (default 1000)
#   TARGET_APP   the tenant under load                       (default app0500)
#   DURATION     wrk measurement                             (default 10s)
#   WARMUP       wrk warm-up                                 (default 2s)
#   CONNECTIONS  wrk connections                             (default 32)
#   THREADS      wrk threads                                 (default 1)
#   IDLE         seconds idle before the idle RSS reading    (default 2)
#   BENCH_OUT    also write the result tables (markdown) to this file
#   MESHD, MESHD_LABEL, MESHD_PROFILE  measure a given meshd binary, or the
#                  work tree built in another profile (as in bench/rps.sh)
#
# meshd listens on 127.0.0.1 only; all load is bounded in time.
set -euo pipefail
BENCH_NAME=scale
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TENANTS="${TENANTS:-1000}"
TARGET_APP="${TARGET_APP:-app0500}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-1}"
IDLE="${IDLE:-2}"
((TENANTS >= 1 && TENANTS <= 10000)) || die "TENANTS must be 1..10000"

need_tools
find_meshd
need_guests hello
check_idle_machine

declare -A STARTUP_COLD STARTUP_WARM SERVING CACHE_COLD CACHE_WARM RSS_IDLE RSS_AFTER RUNTIME_READY

# cache_outcomes LOG: "hit=N, miss=M" over the log's `app deployed` lines.
cache_outcomes() {
    grep 'app deployed' "$1" | sed -n 's/.*cache=\([a-z]*\).*/\1/p' | sort | uniq -c |
        awk '{ printf "%s%s=%s", sep, $2, $1; sep = ", " }'
}

# run_config NAME N_APPS: the two meshd starts and the measurements above.
run_config() {
    local name="$1" n="$2"
    local dir="$WORK/$name"
    mkdir -p "$dir/apps"
    if ((n == 1)); then
        cp "$GUESTS/hello.wasm" "$dir/apps/$TARGET_APP.wasm"
    else
        local i
        for ((i = 0; i < n; i++)); do
            cp "$GUESTS/hello.wasm" "$dir/apps/$(printf 'app%04d' "$i").wasm"
        done
        [[ -f "$dir/apps/$TARGET_APP.wasm" ]] || die "$TARGET_APP is not among the $n apps"
    fi
    local args=(--apps "$dir/apps" --cache-dir "$dir/cache" --data-dir "$dir/data")

    log "$name: first start, $n app(s), empty compile cache"
    start_meshd "$dir/meshd-1.log" "${args[@]}"
    STARTUP_COLD[$name]="$MESHD_STARTUP"
    CACHE_COLD[$name]="$(cache_outcomes "$dir/meshd-1.log")"
    log "$name: listening after ${MESHD_STARTUP} s ($(grep -o 'apps=[0-9]* failed=[0-9]*' "$dir/meshd-1.log")); cache: ${CACHE_COLD[$name]}"
    stop_meshd

    log "$name: second start, same cache"
    start_meshd "$dir/meshd-2.log" "${args[@]}"
    STARTUP_WARM[$name]="$MESHD_STARTUP"
    CACHE_WARM[$name]="$(cache_outcomes "$dir/meshd-2.log")"
    SERVING[$name]="$(grep -o 'apps=[0-9]* failed=[0-9]*' "$dir/meshd-2.log")"
    local ready
    ready="$(grep -m1 'tenant runtime ready' "$dir/meshd-2.log")"
    RUNTIME_READY[$name]="$(awk -v a="$(log_epoch "$ready")" -v b="$MESHD_T0" 'BEGIN { printf "%.3f", a - b }')"
    log "$name: listening after ${MESHD_STARTUP} s (runtime ready after ${RUNTIME_READY[$name]} s; ${SERVING[$name]}); cache: ${CACHE_WARM[$name]}"
    [[ "${SERVING[$name]}" == "apps=$n failed=0" ]] || die "$name: expected apps=$n failed=0, got ${SERVING[$name]}"
    # Identical bytes compile once: one app loads from the cache (or the
    # first few, loaded in parallel), the others share its code.
    [[ "${CACHE_WARM[$name]}" != *miss* && "${CACHE_WARM[$name]}" != *replaced* ]] \
        || die "$name: expected no compile on the second start, got ${CACHE_WARM[$name]}"

    sleep "$IDLE"
    RSS_IDLE[$name]="$(rss_mb "$MESHD_PID")"
    log "$name: after ${IDLE} s idle: VmRSS/RssAnon/RssFile ${RSS_IDLE[$name]} MB"

    local url="http://$MESHD_ADDR/$TARGET_APP/"
    [[ "$(curl -fsS --max-time 2 "$url")" == "Hello from Steelmesh!" ]] || die "$url does not answer the greeting"
    log "$name: warming up for $WARMUP"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$url" >/dev/null
    measure "$name" "$url" -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION"
    RSS_AFTER[$name]="$(rss_mb "$MESHD_PID")"
    log "$name: after the load: VmRSS/RssAnon/RssFile ${RSS_AFTER[$name]} MB"
    du -sh "$dir/cache" >&2
    stop_meshd
}

run_config single 1
run_config many "$TENANTS"

# --- report ------------------------------------------------------------------

met() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN {
    ok = (op == ">=") ? (v >= t) : (v <= t); print (ok ? "met" : "**not met**") }'; }
field() { awk -v i="$2" '{ print $i }' <<<"$1"; }

report() {
    machine_lines
    echo "load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency on /$TARGET_APP/ (after a ${WARMUP} warm-up); tenants: copies of hello.wasm; meshd default flags"
    echo
    echo "| meshd | req/s | p50 (ms) | p99 (ms) | non-2xx | socket errors | other CPU load |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    echo "| 1 tenant | $(thousands "${RPS[single]}") | ${P50[single]} | ${P99[single]} | ${NON2XX[single]} | ${SOCKERR[single]} | ${OTHER[single]}% |"
    echo "| $(thousands "$TENANTS") tenants | $(thousands "${RPS[many]}") | ${P50[many]} | ${P99[many]} | ${NON2XX[many]} | ${SOCKERR[many]} | ${OTHER[many]}% |"
    echo
    local r
    r="$(ratio "${RPS[many]}" "${RPS[single]}")"
    echo "| | 1 tenant | $(thousands "$TENANTS") tenants | target | |"
    echo "|---|---:|---:|---:|---|"
    echo "| req/s, $(thousands "$TENANTS") tenants / 1 | | $r | >= 0.95 | $(met "$r" 0.95 ">=") |"
    echo "| start-up, warm cache (s) | ${STARTUP_WARM[single]} | ${STARTUP_WARM[many]} | <= 2 | $(met "${STARTUP_WARM[many]}" 2 "<=") |"
    echo "| of which until 'tenant runtime ready' (s) | ${RUNTIME_READY[single]} | ${RUNTIME_READY[many]} | | |"
    echo "| start-up, empty cache (s), first start | ${STARTUP_COLD[single]} | ${STARTUP_COLD[many]} | | |"
    echo "| VmRSS idle ${IDLE} s after start-up (MB) | $(field "${RSS_IDLE[single]}" 1) | $(field "${RSS_IDLE[many]}" 1) | <= 200 | $(met "$(field "${RSS_IDLE[many]}" 1)" 200 "<=") |"
    echo "| RssAnon / RssFile idle (MB) | $(field "${RSS_IDLE[single]}" 2) / $(field "${RSS_IDLE[single]}" 3) | $(field "${RSS_IDLE[many]}" 2) / $(field "${RSS_IDLE[many]}" 3) | | |"
    echo "| VmRSS after the wrk run (MB) | $(field "${RSS_AFTER[single]}" 1) | $(field "${RSS_AFTER[many]}" 1) | | |"
    echo "| RssAnon / RssFile after (MB) | $(field "${RSS_AFTER[single]}" 2) / $(field "${RSS_AFTER[single]}" 3) | $(field "${RSS_AFTER[many]}" 2) / $(field "${RSS_AFTER[many]}" 3) | | |"
    echo
    echo "cache outcomes (app deployed lines): first start ${CACHE_COLD[single]} / ${CACHE_COLD[many]}; second start ${CACHE_WARM[single]} / ${CACHE_WARM[many]}"
}

echo
report | tee "${BENCH_OUT:-/dev/null}"

r="$(ratio "${RPS[many]}" "${RPS[single]}")"
summary_row "req/s, $TENANTS tenants / 1" "${r}x" ">= 0.95x" "$(met "$r" 0.95 ">=")"
summary_row "start-up, $TENANTS tenants, warm cache" "${STARTUP_WARM[many]} s" "<= 2 s" "$(met "${STARTUP_WARM[many]}" 2 "<=")"
summary_row "VmRSS idle, $TENANTS tenants (one app's copies)" "$(field "${RSS_IDLE[many]}" 1) MB" "<= 200 MB" "$(met "$(field "${RSS_IDLE[many]}" 1)" 200 "<=")"

failed=0
check_results single many || failed=1
exit "$failed"
