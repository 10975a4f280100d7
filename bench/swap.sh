#!/usr/bin/env bash
# Hot swap: (a) how long from renaming a new version of an app into the apps
# directory until that version answers, with a warm and a cold compile cache;
# (b) the throughput of an app while it is swapped every 100 ms, next to the
# same load without swaps, in one run.
#
#   bash bench/swap.sh
#
# (a) For each settle time in SETTLES and each cache state, a fresh meshd
#     (`--settle S`) serves the `stream` fixture as app.wasm, and
#     bench/swap_latency.py swaps it SWAPS times, alternating stream.wasm
#     (answers `stream`) and stream_v2.wasm (answers `stream-v2`), the way an
#     operator deploys: `cp NEW DIR/.app.tmp && mv DIR/.app.tmp DIR/app.wasm`.
#     Each sample runs from just before the rename to the first response with
#     the new body, polled back to back on one keep-alive connection (Python
#     http.client). warm: both versions are in the compile cache (an untimed
#     warm-up pair first), every swap must log cache=hit. cold: every version
#     gets a unique custom section appended, so every swap must log
#     cache=miss (compiles).
# (b) A fresh meshd (`--settle 50ms`) serves app.wasm; after a warm-up pair of
#     swaps (both versions cached) and a WARMUP of load, wrk measures /app/ in
#     WINDOWS pairs of windows, one without swaps and one while a loop renames
#     the other version onto app.wasm every SWAP_INTERVAL seconds (warm cache),
#     in the order ABBA (without, with, with, without, ...), so that the drift
#     of a shared machine over the run falls on both alike. Each side totals
#     DURATION; the ratio is their mean req/s.
#
# Environment (all optional):
#   SWAPS          timed swaps per (a) run                  (default 50)
#   SETTLES        --settle values for (a)                  (default "50ms 250ms")
#   GAP            pause between two swaps in (a), seconds  (default 0.2)
#   DURATION       wrk measurement per side in (b)          (default 10s)
#   WINDOWS        windows per side in (b)                  (default 5)
#   WARMUP         wrk warm-up in (b)                       (default 2s)
#   CONNECTIONS    wrk connections in (b)                   (default 32)
#   THREADS        wrk threads in (b)                       (default 1)
#   SWAP_INTERVAL  seconds between swaps in (b)             (default 0.1)
#   LOAD_SETTLE    --settle in (b)                          (default 50ms)
#   BENCH_OUT      also write the result tables (markdown) to this file
#   MESHD, MESHD_LABEL, MESHD_PROFILE  measure a given meshd binary, or the
#                  work tree built in another profile (as in bench/rps.sh)
#
# Every server listens on 127.0.0.1 only; all load is bounded in time or count.
set -euo pipefail
BENCH_NAME=swap
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SWAPS="${SWAPS:-50}"
SETTLES="${SETTLES:-50ms 250ms}"
GAP="${GAP:-0.2}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-1}"
SWAP_INTERVAL="${SWAP_INTERVAL:-0.1}"
WINDOWS="${WINDOWS:-5}"
LOAD_SETTLE="${LOAD_SETTLE:-50ms}"
[[ "$DURATION" =~ ^[0-9]+s$ ]] || die "DURATION must be whole seconds, like 10s"
[[ "$WINDOWS" =~ ^[1-9][0-9]*$ ]] || die "WINDOWS must be a positive whole number"
WINDOW=$((${DURATION%s} / WINDOWS))
((WINDOW * WINDOWS == ${DURATION%s})) || die "DURATION ($DURATION) must be a multiple of WINDOWS ($WINDOWS) seconds"

need_tools
find_meshd
need_guests stream stream_v2
V1="$GUESTS/stream.wasm"
V2="$GUESTS/stream_v2.wasm"
check_idle_machine

# --- (a) swap latency --------------------------------------------------------

declare -A LAT_JSON LAT_OTHER
for settle in $SETTLES; do
    for mode in warm cold; do
        run="a-$settle-$mode"
        dir="$WORK/$run"
        mkdir -p "$dir/apps"
        cp "$V1" "$dir/apps/app.wasm"
        start_meshd "$dir/meshd.log" --apps "$dir/apps" --cache-dir "$dir/cache" \
            --data-dir "$dir/data" --settle "$settle"
        log "$run: $SWAPS swaps on http://$MESHD_ADDR/app/ (--settle $settle, $mode cache)"
        cpu_window_start
        python3 "$REPO/bench/swap_latency.py" --addr "$MESHD_ADDR" --route /app/ \
            --apps "$dir/apps" --name app --log "$dir/meshd.log" \
            --v1 "$V1" --v1-body stream --v2 "$V2" --v2-body stream-v2 \
            --mode "$mode" --swaps "$SWAPS" --gap "$GAP" >"$dir/result.json" 2>"$dir/swap.log" ||
            { tail -n 20 "$dir/swap.log" >&2; die "$run: the swap driver failed"; }
        cpu_window_end
        stop_meshd
        LAT_JSON[$run]="$dir/result.json"
        LAT_OTHER[$run]="$OTHER_CPU"
        python3 - "$dir/result.json" "$mode" <<'EOF' || die "$run: unexpected cache outcomes (see above)"
import json, sys
r = json.load(open(sys.argv[1]))
want = {"warm": "hit", "cold": "miss"}[sys.argv[2]]
s = r["stats_ms"]
print(f"[bench] p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms, max {s['max']:.1f} ms; cache {r['cache']}", file=sys.stderr)
if r["cache"] != {want: r["swaps"]}:
    print(f"[bench] error: expected cache={want} for all {r['swaps']} swaps, the log says {r['cache']}", file=sys.stderr)
    sys.exit(1)
EOF
    done
done

# --- (b) throughput while swapping -------------------------------------------

dir="$WORK/b"
mkdir -p "$dir/apps"
cp "$V1" "$dir/apps/app.wasm"
start_meshd "$dir/meshd.log" --apps "$dir/apps" --cache-dir "$dir/cache" \
    --data-dir "$dir/data" --settle "$LOAD_SETTLE"
URL="http://$MESHD_ADDR/app/"

# swap_to FILE BODY: deploys FILE as app.wasm and waits until it answers BODY.
swap_to() {
    cp "$1" "$dir/apps/.app.tmp" && mv "$dir/apps/.app.tmp" "$dir/apps/app.wasm"
    for _ in $(seq 300); do
        [[ "$(curl -fsS --max-time 2 "$URL" || true)" == "$2" ]] && return 0
        sleep 0.1
    done
    die "app.wasm does not answer '$2' 30 s after the swap"
}
log "b: warm-up swap pair (both versions into the compile cache)"
swap_to "$V2" stream-v2
swap_to "$V1" stream
sleep 1

log "b: warming up for $WARMUP"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$URL" >/dev/null

# swap_loop SECONDS: renames the other version onto app.wasm every
# SWAP_INTERVAL s for SECONDS (bounded by time and by count), continuing the
# alternation where the last window left it; counts in $dir/swaps-issued.
echo 0 >"$dir/swaps-issued"
swap_loop() {
    local end=$(($(date +%s%N) + $1 * 1000000000)) n
    n="$(cat "$dir/swaps-issued")"
    local max=$((n + $(awk -v d="$1" -v i="$SWAP_INTERVAL" 'BEGIN { printf "%d", d / i + 1 }')))
    while ((n < max && $(date +%s%N) < end)); do
        if ((n % 2 == 0)); then src="$V2"; else src="$V1"; fi
        cp "$src" "$dir/apps/.app.tmp" && mv "$dir/apps/.app.tmp" "$dir/apps/app.wasm"
        n=$((n + 1))
        echo "$n" >"$dir/swaps-issued"
        sleep "$SWAP_INTERVAL"
    done
}
# window SIDE I: one measured window of SIDE (no-swaps or with-swaps).
window() {
    local name="$1-$2"
    if [[ "$1" == with-swaps ]]; then
        swap_loop "$WINDOW" &
        BG_PIDS+=($!)
        measure "$name" "$URL" -t"$THREADS" -c"$CONNECTIONS" -d"${WINDOW}s"
        wait "${BG_PIDS[@]}"
        BG_PIDS=()
        # The last swap's deploy and drain belong to this side, not the next.
        sleep 0.5
    else
        measure "$name" "$URL" -t"$THREADS" -c"$CONNECTIONS" -d"${WINDOW}s"
    fi
}
updated_before="$(grep -c 'app updated' "$dir/meshd.log" || true)"
for ((i = 1; i <= WINDOWS; i++)); do
    if ((i % 2)); then sides=(no-swaps with-swaps); else sides=(with-swaps no-swaps); fi
    for side in "${sides[@]}"; do
        window "$side" "$i"
    done
done
# Let the last swap land before counting.
sleep 2
# side_total SIDE: this side's windows together, under the side's name: mean
# req/s, requests, errors; p50 the median and p99 the worst of its windows.
side_total() {
    local side="$1" i rps=0 reqs=0 non2xx=0 sockerr=0 other=0 p50s=() p99s=()
    for ((i = 1; i <= WINDOWS; i++)); do
        rps=$((rps + RPS[$side-$i])) reqs=$((reqs + REQS[$side-$i]))
        non2xx=$((non2xx + NON2XX[$side-$i])) sockerr=$((sockerr + SOCKERR[$side-$i]))
        ((OTHER[$side-$i] > other)) && other="${OTHER[$side-$i]}"
        p50s+=("${P50[$side-$i]}") p99s+=("${P99[$side-$i]}")
    done
    RPS[$side]=$((rps / WINDOWS)) REQS[$side]="$reqs" NON2XX[$side]="$non2xx"
    SOCKERR[$side]="$sockerr" OTHER[$side]="$other"
    P50[$side]="$(printf '%s\n' "${p50s[@]}" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')"
    P99[$side]="$(printf '%s\n' "${p99s[@]}" | sort -g | tail -n1)"
}
side_total no-swaps
side_total with-swaps
SWAPS_ISSUED="$(cat "$dir/swaps-issued")"
SWAPS_DEPLOYED=$(($(grep -c 'app updated' "$dir/meshd.log" || true) - updated_before))
SWAP_CACHE="$(tail -n +1 "$dir/meshd.log" | grep 'app updated' | tail -n "$SWAPS_DEPLOYED" |
    sed -n 's/.*cache=\([a-z]*\).*/\1/p' | sort | uniq -c | awk '{ printf "%s%s=%s", sep, $2, $1; sep = ", " }')"
REFUSED="$(grep -c -E 'refused|ERROR' "$dir/meshd.log" || true)"
LAST_BODY="$(curl -fsS --max-time 2 "$URL" || true)"
stop_meshd
log "b: $SWAPS_ISSUED swaps issued, $SWAPS_DEPLOYED deployed ($SWAP_CACHE), $REFUSED refused/error log lines"

# --- report ------------------------------------------------------------------

report() {
    machine_lines
    echo
    echo "(a) rename -> first response from the new version, $SWAPS swaps per row (alternating stream/stream_v2; percentiles interpolated)"
    echo
    echo "| --settle | cache | cache outcomes (log) | min (ms) | p50 (ms) | p99 (ms) | max (ms) | compile_ms (median, log) | old-version answers | other answers / errors | other CPU load |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    local settle mode run
    for settle in $SETTLES; do
        for mode in warm cold; do
            run="a-$settle-$mode"
            python3 - "${LAT_JSON[$run]}" "$settle" "$mode" "${LAT_OTHER[$run]}" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["stats_ms"]
cache = ", ".join(f"{k}={v}" for k, v in sorted(r["cache"].items()))
bad = len(r["other_answers"]) + len(r["request_errors"])
print(f"| {sys.argv[2]} | {sys.argv[3]} | {cache} | {s['min']:.1f} | {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.1f} "
      f"| {r['compile_ms_median']:g} | {r['old_version_answers']} | {bad} | {sys.argv[4]}% |")
EOF
        done
    done
    echo
    echo "(b) wrk -t$THREADS -c$CONNECTIONS --latency on /app/ (after a ${WARMUP} warm-up), $WINDOWS pairs of ${WINDOW} s windows in ABBA order, meshd --settle $LOAD_SETTLE, swaps every ${SWAP_INTERVAL}s with a warm cache"
    echo
    echo "| load | req/s (mean of windows) | p50 (ms, median window) | p99 (ms, worst window) | requests | non-2xx | socket errors | swaps issued / deployed | other CPU load (worst window) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    echo "| no swaps | $(thousands "${RPS[no-swaps]}") | ${P50[no-swaps]} | ${P99[no-swaps]} | ${REQS[no-swaps]} | ${NON2XX[no-swaps]} | ${SOCKERR[no-swaps]} | 0 | ${OTHER[no-swaps]}% |"
    echo "| swap every ${SWAP_INTERVAL}s | $(thousands "${RPS[with-swaps]}") | ${P50[with-swaps]} | ${P99[with-swaps]} | ${REQS[with-swaps]} | ${NON2XX[with-swaps]} | ${SOCKERR[with-swaps]} | $SWAPS_ISSUED / $SWAPS_DEPLOYED ($SWAP_CACHE) | ${OTHER[with-swaps]}% |"
    echo
    local i pairs=""
    for ((i = 1; i <= WINDOWS; i++)); do
        pairs+="${pairs:+, }$(ratio "${RPS[with-swaps-$i]}" "${RPS[no-swaps-$i]}")"
    done
    echo "with swaps / without (req/s): $(ratio "${RPS[with-swaps]}" "${RPS[no-swaps]}") (window pairs: $pairs); refused/error lines in meshd's log: $REFUSED; last answer: '$LAST_BODY'"
}

echo
report | tee "${BENCH_OUT:-/dev/null}"

r="$(ratio "${RPS[with-swaps]}" "${RPS[no-swaps]}")"
summary_row "req/s while swapping / without" "${r}x, $REFUSED refused" ">= 0.9x, 0 refused" \
    "$(awk -v r="$r" -v n="$REFUSED" 'BEGIN { print (r + 0 >= 0.9 && n == 0 ? "yes" : "no") }')"

failed=0
for run in "${!LAT_OTHER[@]}"; do
    if ((LAT_OTHER[$run] > 15)); then
        log "warning: something else used ${LAT_OTHER[$run]}% of a core during $run; its figures are skewed"
    fi
    python3 - "${LAT_JSON[$run]}" "$run" <<'EOF' || failed=1
import json, sys
r = json.load(open(sys.argv[1]))
bad = r["other_answers"] + r["request_errors"] + r["refused"]
if bad:
    print(f"[bench] error: {sys.argv[2]}: {len(bad)} non-200 answers, request errors or refused versions:", file=sys.stderr)
    for b in bad[:20]:
        print(f"[bench]   {b}", file=sys.stderr)
    sys.exit(1)
EOF
done
check_results no-swaps with-swaps || failed=1
((REFUSED == 0)) || { log "error: meshd logged $REFUSED refused/error lines during (b)"; failed=1; }
exit "$failed"
