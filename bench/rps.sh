#!/usr/bin/env bash
# Requests per second and p50/p99 latency of the `hello` example app served by
# meshd, next to a native hyper hello server and `wasmtime serve` on the same
# hello component, in one run, with the ratios.
#
#   bash bench/rps.sh
#
# Environment (all optional):
#   DURATION     how long wrk measures each server        (default 10s)
#   WARMUP       how long wrk warms each server up first  (default 2s)
#   CONNECTIONS  open connections wrk keeps               (default 32)
#   THREADS      wrk threads                              (default 1)
#   BENCH_PORT   first loopback port to try               (default 18080)
#   BENCH_OUT    also write the result table (markdown) to this file
#   MESHD_PROFILE  the build of meshd: a cargo profile (default release-lto;
#                `release` builds much faster) or `pgo` (bench/pgo.sh, the
#                build docs/operations.md recommends deploying)
#   MESHD        a meshd binary to measure instead of building the work tree's
#                (e.g. one built from a given commit)
#   MESHD_LABEL  how the report names that binary (e.g. "at commit abc1234")
#   WORKERS      also measure a second meshd with `--workers WORKERS` (e.g. 1,
#                to leave a core to wrk on a 2-core machine); default: only
#                meshd with its default (one worker per CPU)
#   ROUNDS       run everything this many times, one round after another, and
#                end with each ratio per round and its median (default 1). On
#                a 2-core machine shared with wrk, one round's ratios move by
#                10-15% between runs; three or more rounds are worth it.
#   REUSE        instance reuse: N > 1 gives meshd's app `reuse = N` and runs
#                `wasmtime serve --max-instance-reuse-count N` (default 1:
#                a fresh instance per request for both)
#   PIN          1: give the load generator a core of its own, as a separate
#                load machine would: every server runs on CPU 0 only
#                (`taskset -c 0`, so each starts one worker thread) and wrk
#                on CPU 1. Default 0: servers and wrk share every core.
#
# It installs what it lacks: wrk and curl with apt-get, and the wasmtime CLI at
# the workspace's wasmtime version with `cargo install`, into
# target/bench/wasmtime-cli (kept between runs; the first install took about 11
# minutes on 2 cores). Every server listens on 127.0.0.1 only, and all load is
# sent there, for a bounded time.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# ROUNDS > 1: run this script once per round, then summarise the ratios.
ROUNDS="${ROUNDS:-1}"
if ((ROUNDS > 1)) && [[ -z "${RPS_ROUND:-}" ]]; then
    rounds_dir="$(mktemp -d "${TMPDIR:-/tmp}/steelmesh-rounds.XXXXXX")"
    trap 'rm -rf "$rounds_dir"' EXIT
    for ((round = 1; round <= ROUNDS; round++)); do
        printf '[bench] round %d of %d\n' "$round" "$ROUNDS" >&2
        RPS_ROUND="$round" BENCH_OUT="$rounds_dir/round-$round.md" \
            BENCH_SUMMARY="${BENCH_SUMMARY:+$rounds_dir/summary-$round.tsv}" bash "${BASH_SOURCE[0]}" >/dev/null
    done
    {
        for ((round = 1; round <= ROUNDS; round++)); do
            echo "## round $round"
            echo
            cat "$rounds_dir/round-$round.md"
            echo
        done
        echo "## ratios over $ROUNDS rounds"
        echo
        echo "| ratio | per round | median |"
        echo "|---|---|---:|"
        # Every "| label | value |" line of the rounds' ratio tables.
        grep -h '^| meshd[^|]* / [^|]* | [0-9.]* |$' "$rounds_dir"/round-*.md |
            awk -F' [|] ' '{ label = substr($1, 3); value = $2; sub(/ [|]$/, "", value)
                         if (!(label in seen)) { seen[label] = 1; order[++n] = label }
                         values[label] = values[label] (values[label] == "" ? "" : ", ") value }
                   END { for (i = 1; i <= n; i++) print order[i] "\t" values[order[i]] }' |
            while IFS=$'\t' read -r label values; do
                median="$(tr ',' '\n' <<<"$values" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }')"
                echo "| $label | $values | $median |"
            done
    } >"$rounds_dir/summary.md"
    cat "$rounds_dir/summary.md"
    # bench/all.sh's rows: each figure's median over the rounds, met or not
    # by the median.
    if [[ -n "${BENCH_SUMMARY:-}" ]]; then
        cat "$rounds_dir"/summary-*.tsv | awk -F'\t' -v rounds="$ROUNDS" '
            { key = $2; if (!(key in n)) { order[++k] = key; bench[key] = $1; target[key] = $4 }
              v[key, ++n[key]] = $3 + 0 }
            END {
                for (i = 1; i <= k; i++) {
                    key = order[i]; m = n[key]
                    for (a = 1; a <= m; a++) for (b = a + 1; b <= m; b++)
                        if (v[key, b] < v[key, a]) { t = v[key, a]; v[key, a] = v[key, b]; v[key, b] = t }
                    med = (m % 2 ? v[key, (m + 1) / 2] : (v[key, m / 2] + v[key, m / 2 + 1]) / 2)
                    split(target[key], tg, " "); goal = tg[2] + 0
                    met = (tg[1] == ">=" ? (med >= goal) : (med <= goal)) ? "yes" : "no"
                    printf "%s\t%s\t%.3fx (median of %d rounds)\t%s\t%s\n", bench[key], key, med, m, target[key], met
                }
            }' >>"$BENCH_SUMMARY"
    fi
    if [[ -n "${BENCH_OUT:-}" ]]; then
        cp "$rounds_dir/summary.md" "$BENCH_OUT"
    fi
    exit 0
fi
BENCH_NAME=rps
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-1}"
NEXT_PORT="${BENCH_PORT:-18080}"

trap 'stop_server; cleanup' EXIT

need_tools

need_wasmtime_cli

# --- builds ------------------------------------------------------------------

cd "$REPO"
if [[ -n "${MESHD:-}" ]]; then
    [[ -x "$MESHD" ]] || die "MESHD=$MESHD is not an executable"
    log "measuring the given meshd: $MESHD"
    MESHD_REV="${MESHD_LABEL:-given binary $MESHD}"
else
    build_meshd
    MESHD="$(meshd_build_path)"
    MESHD_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown), $(meshd_build_label)"
    if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
        MESHD_REV="$MESHD_REV with uncommitted changes"
    fi
fi

log "building the hello example guest"
nice -n 10 cargo build --release --target wasm32-wasip2 \
    --manifest-path apps-example/Cargo.toml --target-dir target/guests -p hello
HELLO_WASM="$REPO/target/guests/wasm32-wasip2/release/hello.wasm"
[[ -f "$HELLO_WASM" ]] || die "no $HELLO_WASM after the guest build"

need_native_hello

# --- running one server ------------------------------------------------------

wait_ready() {
    local url="$1" log_file="$2"
    for _ in $(seq 600); do
        if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$log_file" >&2; die "server exited before answering $url"; }
        sleep 0.1
    done
    cat "$log_file" >&2
    die "no answer from $url after 60 s"
}

# PIN=1: servers on CPU 0, wrk on CPU 1.
SERVER_PREFIX=() WRK_PREFIX=() PIN_NOTE=""
if [[ "${PIN:-0}" == 1 ]]; then
    (($(nproc) >= 2)) || die "PIN=1 needs at least 2 CPUs"
    SERVER_PREFIX=(taskset -c 0) WRK_PREFIX=(taskset -c 1)
    PIN_NOTE="; servers pinned to CPU 0 (taskset -c 0), wrk to CPU 1"
fi

declare -A RPS P50 P99 NON2XX SOCKERR OTHER CPU_US

# User and system time of one process and all its threads, in clock ticks.
process_jiffies() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

# start_server NAME URL COMMAND...: starts COMMAND (pinned with PIN=1), its
# output in $WORK/NAME.log, and waits until URL answers.
start_server() {
    local name="$1" url="$2"
    shift 2
    log "$name: starting (${*})"
    "${SERVER_PREFIX[@]}" "$@" >"$WORK/$name.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "$url" "$WORK/$name.log"
}

# bench NAME URL COMMAND...: start COMMAND, wait until URL answers, warm up,
# measure with wrk, stop the server.
bench() {
    local name="$1" url="$2"
    local out="$WORK/$name.wrk"
    start_server "$@"
    local body
    body="$(curl -fsS --max-time 2 "$url")"
    [[ "$body" == "Hello from Steelmesh!" ]] || die "$name answered '$body', not the hello greeting"

    log "$name: warming up for $WARMUP"
    "${WRK_PREFIX[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$url" >/dev/null
    log "$name: measuring for $DURATION"
    # CPU time of the whole machine, of the server and of wrk over the run:
    # what is left was spent by something else and skews the figures.
    local busy0 server0 t0 busy1 server1 t1 wrk_s
    busy0="$(machine_jiffies)" server0="$(process_jiffies "$SERVER_PID")" t0="$(date +%s.%N)"
    local TIMEFORMAT='%U %S'
    { time "${WRK_PREFIX[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url" >"$out"; } 2>"$WORK/$name.time"
    busy1="$(machine_jiffies)" server1="$(process_jiffies "$SERVER_PID")" t1="$(date +%s.%N)"
    stop_server
    wrk_s="$(awk 'END { print $1 + $2 }' "$WORK/$name.time")"
    OTHER[$name]="$(awk -v b="$((busy1 - busy0))" -v s="$((server1 - server0))" -v w="$wrk_s" \
        -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" 'BEGIN {
            o = (b - s) / hz - w; if (o < 0) o = 0
            printf "%.0f", 100 * o / (t1 - t0)
        }')"

    RPS[$name]="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")"
    P50[$name]="$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")"
    P99[$name]="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")"
    # Non-2xx/3xx answers and socket errors: a fast error is not a fast hello.
    NON2XX[$name]="$(awk '/Non-2xx or 3xx responses:/ { n += $NF } END { print n + 0 }' "$out")"
    SOCKERR[$name]="$(awk '/Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
                           END { print n + 0 }' "$out")"
    [[ -n "${RPS[$name]}" ]] || { cat "$out" >&2; die "cannot parse wrk's output for $name"; }
    # The server's own CPU time per request: the figure that does not move
    # between machines the way req/s does (issue #18).
    CPU_US[$name]="$(awk -v s="$((server1 - server0))" -v hz="$CLK_TCK" \
        -v n="$(awk '/requests in/ { print $1 }' "$out")" 'BEGIN { printf "%.1f", (n > 0 ? 1e6 * s / hz / n : 0) }')"
    log "$name: ${RPS[$name]} req/s, p50 ${P50[$name]} ms, p99 ${P99[$name]} ms," \
        "non-2xx ${NON2XX[$name]}, socket errors ${SOCKERR[$name]}, other CPU ${OTHER[$name]}%," \
        "server CPU ${CPU_US[$name]} us/request"
}

# bench_h2 NAME URL COMMAND...: like bench, with h2load over h2c (prior
# knowledge), H2_STREAMS streams per connection on CONNECTIONS connections.
bench_h2() {
    local name="$1" url="$2"
    local out="$WORK/$name.h2load"
    start_server "$@"
    local h2=(h2load -t"$THREADS" -c"$CONNECTIONS" -m"$H2_STREAMS")
    log "$name: warming up for $WARMUP"
    "${WRK_PREFIX[@]}" "${h2[@]}" -D"${WARMUP%s}" "$url" >/dev/null
    log "$name: measuring for $DURATION (${h2[*]})"
    local server0 server1
    server0="$(process_jiffies "$SERVER_PID")"
    "${WRK_PREFIX[@]}" "${h2[@]}" -D"${DURATION%s}" "$url" >"$out"
    server1="$(process_jiffies "$SERVER_PID")"
    stop_server
    RPS[$name]="$(awk '/^finished in/ { gsub(/,/, ""); printf "%.0f", $4 }' "$out")"
    local done_n failed_n
    done_n="$(awk '/^requests:/ { print $8 }' "$out")"
    failed_n="$(awk '/^requests:/ { print $10 }' "$out")"
    NON2XX[$name]="$(awk '/^status codes:/ { gsub(/,/, ""); print $5 + $7 + $9 }' "$out")"
    SOCKERR[$name]="${failed_n:-0}"
    P50[$name]="n/a" P99[$name]="n/a" OTHER[$name]=0
    [[ -n "${RPS[$name]}" && -n "$done_n" ]] || { cat "$out" >&2; die "cannot parse h2load's output for $name"; }
    CPU_US[$name]="$(awk -v s="$((server1 - server0))" -v hz="$CLK_TCK" -v n="$done_n" \
        'BEGIN { printf "%.1f", (n > 0 ? 1e6 * s / hz / n : 0) }')"
    log "$name: ${RPS[$name]} req/s, ${done_n} done, ${failed_n} failed, server CPU ${CPU_US[$name]} us/request"
}

# --- the three servers -------------------------------------------------------

# Client and servers share this machine's cores, so anything else running
# (a build, say) skews the figures. Say how busy the machine was beforehand.
check_idle_machine

port="$(free_port)"
bench native "http://$HOST:$port/hello/" "$NATIVE" "$HOST:$port"

REUSE="${REUSE:-1}"
port="$(free_port)"
bench wasmtime-serve "http://$HOST:$port/hello/" \
    "$WASMTIME" serve -Scli --max-instance-reuse-count "$REUSE" --addr "$HOST:$port" "$HELLO_WASM"

mkdir -p "$WORK/apps" "$WORK/meshd-cache"
cp "$HELLO_WASM" "$WORK/apps/hello.wasm"
if ((REUSE > 1)); then
    echo "reuse = $REUSE" >"$WORK/apps/hello.toml"
fi
port="$(free_port)"
bench meshd "http://$HOST:$port/hello/" \
    "$MESHD" --apps "$WORK/apps" --listen "$HOST:$port" --cache-dir "$WORK/meshd-cache" --data-dir "$WORK/meshd-data"
MESHD_ROWS=(meshd)
# The same meshd over h2c: H2_STREAMS streams per connection (issue #18:
# HTTP/2 at least as fast as HTTP/1.1). H2=0 leaves it out.
H2_STREAMS="${H2_STREAMS:-10}"
if [[ "${H2:-1}" == 1 ]]; then
    port="$(free_port)"
    bench_h2 meshd-h2c "http://$HOST:$port/hello/" \
        "$MESHD" --apps "$WORK/apps" --listen "$HOST:$port" --cache-dir "$WORK/meshd-cache" --data-dir "$WORK/meshd-data"
    MESHD_ROWS+=(meshd-h2c)
fi
if [[ -n "${WORKERS:-}" ]]; then
    port="$(free_port)"
    bench meshd-workers "http://$HOST:$port/hello/" \
        "$MESHD" --apps "$WORK/apps" --listen "$HOST:$port" --cache-dir "$WORK/meshd-cache" --data-dir "$WORK/meshd-data" \
        --workers "$WORKERS"
    MESHD_ROWS+=(meshd-workers)
fi

# --- report ------------------------------------------------------------------


CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
MEM_TOTAL="$(free -h | awk '/^Mem:/ { print $2 }')"

report() {
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc) cores, ${CPU_MODEL:-unknown CPU}, $MEM_TOTAL memory, $(uname -sr)"
    echo "load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (after ${WARMUP} warm-up), on the same machine$PIN_NOTE"
    echo "versions: $("$WASMTIME" --version), meshd $MESHD_REV, $(wrk -v 2>&1 | head -n1 | awk '{ print $1, $2 }')"
    echo "CPU busy just before the runs: ${BUSY_BEFORE}%; other CPU load = CPU time spent by anything but the server and wrk during a run, in % of one core"
    echo
    echo "| server | req/s | p50 (ms) | p99 (ms) | server CPU per request (us) | non-2xx | socket errors | other CPU load |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    local name label
    for name in native wasmtime-serve "${MESHD_ROWS[@]}"; do
        case "$name" in
            native) label="native hyper hello" ;;
            wasmtime-serve) label="\`wasmtime serve -Scli --max-instance-reuse-count $REUSE\`" ;;
            meshd) label="meshd (\`/hello/\`, reuse = $REUSE)" ;;
            meshd-h2c) label="meshd over h2c, \`h2load -c$CONNECTIONS -m$H2_STREAMS -t$THREADS\` (reuse = $REUSE)" ;;
            meshd-workers) label="meshd --workers $WORKERS (\`/hello/\`, reuse = $REUSE)" ;;
        esac
        echo "| $label | $(thousands "${RPS[$name]}") | ${P50[$name]} | ${P99[$name]} | ${CPU_US[$name]} | ${NON2XX[$name]} | ${SOCKERR[$name]} | ${OTHER[$name]}% |"
    done
    echo
    echo "| ratio (req/s) | |"
    echo "|---|---:|"
    echo "| meshd / wasmtime serve | $(ratio "${RPS[meshd]}" "${RPS[wasmtime-serve]}") |"
    echo "| meshd / native | $(ratio "${RPS[meshd]}" "${RPS[native]}") |"
    echo "| meshd p99 / native p99 | $(ratio "${P99[meshd]}" "${P99[native]}") |"
    echo "| meshd CPU per request / native's | $(ratio "${CPU_US[meshd]}" "${CPU_US[native]}") |"
    if [[ -n "${RPS[meshd-h2c]:-}" ]]; then
        echo "| meshd h2c (h2load, $H2_STREAMS streams per connection) / meshd HTTP/1.1 (wrk) | $(ratio "${RPS[meshd-h2c]}" "${RPS[meshd]}") |"
    fi
    if [[ -n "${WORKERS:-}" ]]; then
        echo "| meshd --workers $WORKERS / wasmtime serve | $(ratio "${RPS[meshd-workers]}" "${RPS[wasmtime-serve]}") |"
        echo "| meshd --workers $WORKERS / native | $(ratio "${RPS[meshd-workers]}" "${RPS[native]}") |"
        echo "| meshd --workers $WORKERS p99 / native p99 | $(ratio "${P99[meshd-workers]}" "${P99[native]}") |"
    fi
}

echo
report | tee "${BENCH_OUT:-/dev/null}"

# One row per target for bench/all.sh (issue #18; the fresh path's ratio to
# wasmtime serve from the first round of issues).
at_least() { awk -v v="$1" -v t="$2" 'BEGIN { print (v != "n/a" && v + 0 >= t ? "yes" : "no") }'; }
at_most() { awk -v v="$1" -v t="$2" 'BEGIN { print (v != "n/a" && v + 0 <= t ? "yes" : "no") }'; }
path="fresh instance"
((REUSE > 1)) && path="reuse = $REUSE"
r_native="$(ratio "${RPS[meshd]}" "${RPS[native]}")"
r_p99="$(ratio "${P99[meshd]}" "${P99[native]}")"
r_cpu="$(ratio "${CPU_US[meshd]}" "${CPU_US[native]}")"
r_serve="$(ratio "${RPS[meshd]}" "${RPS[wasmtime-serve]}")"
if ((REUSE > 1)); then
    summary_row "$path: meshd / native req/s${PIN_NOTE:+ (pinned)}" "${r_native}x" ">= 0.5x" "$(at_least "$r_native" 0.5)"
    summary_row "$path: meshd p99 / native p99${PIN_NOTE:+ (pinned)}" "${r_p99}x" "<= 2x" "$(at_most "$r_p99" 2)"
    summary_row "$path: meshd CPU per request / native's${PIN_NOTE:+ (pinned)}" "${r_cpu}x (${CPU_US[meshd]} vs ${CPU_US[native]} us)" "<= 2x" "$(at_most "$r_cpu" 2)"
else
    summary_row "$path: meshd / wasmtime serve req/s${PIN_NOTE:+ (pinned)}" "${r_serve}x" ">= 4x" "$(at_least "$r_serve" 4)"
    summary_row "$path: meshd / native req/s${PIN_NOTE:+ (pinned)}" "${r_native}x" ">= 0.35x" "$(at_least "$r_native" 0.35)"
fi
if [[ -n "${RPS[meshd-h2c]:-}" ]]; then
    r_h2="$(ratio "${RPS[meshd-h2c]}" "${RPS[meshd]}")"
    summary_row "$path: meshd h2c (h2load -m$H2_STREAMS) / HTTP/1.1 (wrk)${PIN_NOTE:+ (pinned)}" "${r_h2}x" ">= 1.0x" "$(at_least "$r_h2" 1)"
fi

for name in native wasmtime-serve meshd; do
    if ((OTHER[$name] > 15)); then
        log "warning: something else used ${OTHER[$name]}% of a core while $name was measured; its figures are skewed"
    fi
    if ((SOCKERR[$name] > 0)); then
        log "warning: wrk saw socket errors against $name (see the table)"
    fi
    if ((NON2XX[$name] > 0)); then
        log "error: $name gave non-2xx answers; its figures do not measure the hello app"
        failed=1
    fi
done
exit "${failed:-0}"
