#!/usr/bin/env bash
# A paired A/B of two meshd binaries: CPU per request and req/s of hello, both
# servers running at once and measured in turns, in short windows, so that the
# drift of a shared machine falls on both alike.
#
#   A=/path/to/meshd-a B=/path/to/meshd-b bash bench/ab.sh
#
# On this kind of VM, runs of one server after the other differ by 20-30% from
# one minute to the next, which hides a change of a few percent. Here both
# meshd processes serve the same hello.wasm (each with its own apps, cache and
# data directories); after a warm-up of each, wrk loads one for a WINDOW, then
# the other, in the order ABBA (A B, B A, A B, ...), PAIRS windows per side.
# One process also differs from the next of the same binary by a few percent
# (where its memory lands; the one started first did better in a control run
# of one binary against itself: 1.022), so this is repeated for ROUNDS pairs
# of fresh processes, the one started first alternating. Each server's CPU
# time over its own windows (utime + stime from /proc/PID/stat) divided by
# the requests wrk counted in them is its CPU per request. The report gives
# both sides over all rounds, B / A for CPU per request and req/s, and B / A
# of each round, whose spread shows how far to trust the ratio. To learn the
# noise floor, run it with A and B the same binary.
#
# Environment:
#   A, B           the two meshd binaries (required; copied before the run)
#   A_LABEL, B_LABEL  names in the report        (default: the file names)
#   MODE           reuse (hello.toml `reuse = 1000`) or fresh (a new instance
#                  per request)                   (default reuse)
#   ROUNDS         pairs of processes, even       (default 4)
#   PAIRS          windows per side and round, even (default 6)
#   WINDOW         seconds per window             (default 2)
#   CONNECTIONS    wrk connections                (default 32)
#   WARMUP         wrk warm-up per process        (default 2s)
#   BENCH_OUT      also write the result table (markdown) to this file
#
# Both servers listen on 127.0.0.1 only; all load is bounded in time.
set -euo pipefail
BENCH_NAME=ab
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODE="${MODE:-reuse}"
ROUNDS="${ROUNDS:-4}"
PAIRS="${PAIRS:-6}"
WINDOW="${WINDOW:-2}"
CONNECTIONS="${CONNECTIONS:-32}"
WARMUP="${WARMUP:-2s}"
[[ -n "${A:-}" && -n "${B:-}" ]] || die "set A and B to the two meshd binaries to compare"
[[ -x "$A" ]] || die "A=$A is not an executable"
[[ -x "$B" ]] || die "B=$B is not an executable"
[[ "$MODE" == reuse || "$MODE" == fresh ]] || die "MODE must be reuse or fresh"
[[ "$PAIRS" =~ ^[1-9][0-9]*$ ]] && ((PAIRS % 2 == 0)) || die "PAIRS must be a positive even number"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] && ((ROUNDS % 2 == 0)) || die "ROUNDS must be a positive even number"
[[ "$WINDOW" =~ ^[1-9][0-9]*$ ]] || die "WINDOW must be whole seconds, like 2"
A_LABEL="${A_LABEL:-$(basename "$A")}"
B_LABEL="${B_LABEL:-$(basename "$B")}"

need_tools
need_guests hello
check_idle_machine
MESHD_REV="two binaries, A and B below"

# The binaries are copied once, before the first round, so that a rebuild
# during the run cannot change what is measured.
mkdir -p "$WORK/bin"
cp "$A" "$WORK/bin/a"
cp "$B" "$WORK/bin/b"
SHA_a="$(sha256sum "$WORK/bin/a" | cut -c1-12)"
SHA_b="$(sha256sum "$WORK/bin/b" | cut -c1-12)"

# start_side SIDE ROUND: a meshd of SIDE's binary (a or b) serving hello from
# directories of its own for ROUND; sets PID_<SIDE> and ADDR_<SIDE>.
start_side() {
    local side="$1" dir="$WORK/$1.$2"
    mkdir -p "$dir/apps"
    cp "$GUESTS/hello.wasm" "$dir/apps/hello.wasm"
    if [[ "$MODE" == reuse ]]; then
        echo "reuse = 1000" >"$dir/apps/hello.toml"
    fi
    MESHD="$WORK/bin/$side" start_meshd "$dir/meshd.log" --apps "$dir/apps" \
        --cache-dir "$dir/cache" --data-dir "$dir/data" --no-watch
    # Stopped at the end of the round, or by the EXIT trap's stop_background.
    BG_PIDS+=("$MESHD_PID")
    printf -v "PID_$side" '%s' "$MESHD_PID"
    printf -v "ADDR_$side" '%s' "$MESHD_ADDR"
    MESHD_PID=""
    [[ "$(curl -fsS --max-time 5 "http://$MESHD_ADDR/hello/")" == "Hello from Steelmesh!" ]] ||
        die "$side ($(basename "$dir")) does not answer the greeting"
}

# Totals per side, and per round (lib.sh's REQS and NON2XX hold the last
# window, as parse_wrk read it).
declare -A TOTAL_TICKS TOTAL_REQS TOTAL_NON2XX ROUND_TICKS ROUND_REQS
for side in a b; do TOTAL_TICKS[$side]=0 TOTAL_REQS[$side]=0 TOTAL_NON2XX[$side]=0; done

# window SIDE ROUND: one wrk window on SIDE, its CPU time and requests added up.
window() {
    local side="$1" round="$2" pid_var="PID_$1" addr_var="ADDR_$1" t0 t1 n
    read -r t0 _ < <(proc_ticks_and_faults "${!pid_var}")
    wrk -t1 -c"$CONNECTIONS" -d"${WINDOW}s" "http://${!addr_var}/hello/" >"$WORK/window.txt"
    read -r t1 _ < <(proc_ticks_and_faults "${!pid_var}")
    parse_wrk window "$WORK/window.txt"
    n="${REQS[window]}"
    [[ "$n" =~ ^[0-9]+$ ]] && ((n > 0)) || die "wrk counted no requests on $side: $(cat "$WORK/window.txt")"
    TOTAL_TICKS[$side]=$((TOTAL_TICKS[$side] + t1 - t0))
    TOTAL_REQS[$side]=$((TOTAL_REQS[$side] + n))
    TOTAL_NON2XX[$side]=$((TOTAL_NON2XX[$side] + NON2XX[window]))
    ROUND_TICKS[$side.$round]=$((${ROUND_TICKS[$side.$round]:-0} + t1 - t0))
    ROUND_REQS[$side.$round]=$((${ROUND_REQS[$side.$round]:-0} + n))
}

log "measuring: $ROUNDS rounds of $PAIRS windows of ${WINDOW}s per side, ABBA, wrk -t1 -c$CONNECTIONS, mode $MODE"
for ((round = 0; round < ROUNDS; round++)); do
    if ((round % 2 == 0)); then
        start_side a "$round"
        start_side b "$round"
    else
        start_side b "$round"
        start_side a "$round"
    fi
    for side in a b; do
        addr_var="ADDR_$side"
        wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" "http://${!addr_var}/hello/" >/dev/null
    done
    for ((i = 0; i < PAIRS; i++)); do
        if (((i + round) % 2 == 0)); then
            window a "$round"
            window b "$round"
        else
            window b "$round"
            window a "$round"
        fi
    done
    stop_background
    log "round $((round + 1)) of $ROUNDS done"
done

us_per_request() { awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", 1e6 * t / hz / n }'; }
CPU_A="$(us_per_request "${TOTAL_TICKS[a]}" "${TOTAL_REQS[a]}")"
CPU_B="$(us_per_request "${TOTAL_TICKS[b]}" "${TOTAL_REQS[b]}")"
SECONDS_PER_SIDE=$((ROUNDS * PAIRS * WINDOW))
RPS_A=$((TOTAL_REQS[a] / SECONDS_PER_SIDE))
RPS_B=$((TOTAL_REQS[b] / SECONDS_PER_SIDE))
ROUNDS_CPU=""
for ((r = 0; r < ROUNDS; r++)); do
    ra="$(us_per_request "${ROUND_TICKS[a.$r]}" "${ROUND_REQS[a.$r]}")"
    rb="$(us_per_request "${ROUND_TICKS[b.$r]}" "${ROUND_REQS[b.$r]}")"
    ROUNDS_CPU="$ROUNDS_CPU${ROUNDS_CPU:+, }$(ratio "$rb" "$ra")"
done

REPORT="$WORK/report.md"
{
    echo
    machine_lines
    echo "A: $A_LABEL (binary sha256 $SHA_a); B: $B_LABEL (binary sha256 $SHA_b)"
    echo "load: hello ($MODE), wrk -t1 -c$CONNECTIONS; $ROUNDS rounds (fresh processes, the first started alternating) of $PAIRS windows of ${WINDOW}s per side in the order ABBA, both servers running throughout"
    echo
    echo "| server | req/s | CPU per request (us) | non-2xx |"
    echo "|---|---:|---:|---:|"
    echo "| A: $A_LABEL | $(thousands "$RPS_A") | $CPU_A | ${TOTAL_NON2XX[a]} |"
    echo "| B: $B_LABEL | $(thousands "$RPS_B") | $CPU_B | ${TOTAL_NON2XX[b]} |"
    echo
    echo "B / A: CPU per request **$(ratio "$CPU_B" "$CPU_A")**, req/s **$(ratio "$RPS_B" "$RPS_A")**"
    echo "B / A CPU per request of each round (A started first in the 1st, 3rd, ...): $ROUNDS_CPU"
} >"$REPORT"
cat "$REPORT"
if [[ -n "${BENCH_OUT:-}" ]]; then
    cp "$REPORT" "$BENCH_OUT"
fi
