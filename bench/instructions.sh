#!/usr/bin/env bash
# Instructions per request: how many user-space instructions each server
# executes for one request to the hello app, counted by valgrind's callgrind.
# Native hyper, `wasmtime serve` and meshd, each with a fresh instance per
# request and with instance reuse, in one run, with the ratios.
#
#   bash bench/instructions.sh
#
# Why a count and not a time: requests per second and CPU time per request
# move with the machine (this VM's wasm hosts ran 3.5-5x slower on some days
# than on others) and with whatever else runs. An instruction count does
# neither: two runs of the same binary differ by well under 1%, so a change
# that saves 2% of the request path shows in one run, where wrk would need
# many paired runs on a quiet machine. It does not see what instructions
# cost (cache misses, the kernel's share: system calls and the loopback
# path are not counted), so it complements bench/rps.sh, it does not
# replace it.
#
# Each server runs under callgrind (about 50x slower), answers WARMUP_REQUESTS
# requests, has its counters zeroed, answers REQUESTS more (h2load over
# HTTP/1.1, 4 connections), and has them dumped: every thread's instructions
# over exactly those requests, divided by their number. meshd runs with
# `--workers 1`.
#
# Environment (all optional):
#   REQUESTS         requests counted per server           (default 2000)
#   WARMUP_REQUESTS  requests before counting              (default 500)
#   REUSE            the reuse rows' `reuse` / `--max-instance-reuse-count`
#                    (default 1000)
#   MESHD, MESHD_LABEL, MESHD_PROFILE  which meshd (as bench/lib.sh says)
#   BENCH_OUT        also write the result table (markdown) to this file
#   BENCH_PORT       first loopback port to try            (default 18180)
#
# It installs what it lacks: valgrind, h2load (nghttp2-client) and curl with
# apt-get, and the wasmtime CLI as bench/rps.sh does.
set -euo pipefail
BENCH_NAME=instructions
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap 'stop_server; cleanup' EXIT

REQUESTS="${REQUESTS:-2000}"
WARMUP_REQUESTS="${WARMUP_REQUESTS:-500}"
REUSE="${REUSE:-1000}"
NEXT_PORT="${BENCH_PORT:-18180}"

need_tools
command -v valgrind >/dev/null || apt_install valgrind
command -v h2load >/dev/null || apt_install nghttp2-client
need_wasmtime_cli
need_native_hello
find_meshd
need_guests hello
HELLO_WASM="$GUESTS/hello.wasm"

declare -A PER_REQUEST

# count NAME PORT COMMAND...: runs COMMAND under callgrind, waits until
# http://HOST:PORT/hello/ answers the greeting, and sets PER_REQUEST[NAME].
count() {
    local name="$1" port="$2"
    shift 2
    local url="http://$HOST:$port/hello/"
    log "$name: starting under callgrind (${*})"
    valgrind --tool=callgrind --dump-instr=no \
        --callgrind-out-file="$WORK/$name.callgrind.%p" "$@" >"$WORK/$name.log" 2>&1 &
    SERVER_PID=$!
    local body=""
    for _ in $(seq 1200); do
        body="$(curl -fsS --max-time 5 "$url" 2>/dev/null)" && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/$name.log" >&2; die "$name exited before answering"; }
        sleep 0.25
    done
    [[ "$body" == "Hello from Steelmesh!" ]] || { cat "$WORK/$name.log" >&2; die "$name answered '$body', not the hello greeting"; }

    h2load --h1 -n "$WARMUP_REQUESTS" -c 4 "$url" >/dev/null
    callgrind_control --zero "$SERVER_PID" >/dev/null 2>&1
    h2load --h1 -n "$REQUESTS" -c 4 "$url" >"$WORK/$name.h2load"
    callgrind_control --dump "$SERVER_PID" >/dev/null 2>&1
    local ok
    ok="$(awk '/^status codes:/ { gsub(/,/, ""); print $3 }' "$WORK/$name.h2load")"
    [[ "$ok" == "$REQUESTS" ]] || { cat "$WORK/$name.h2load" >&2; die "$name: $ok of $REQUESTS requests answered 2xx"; }
    local dump instructions
    dump="$(ls -t "$WORK/$name.callgrind.$SERVER_PID".* | head -n1)"
    stop_server
    instructions="$(awk '/^summary:/ { print $2 }' "$dump")"
    [[ -n "$instructions" ]] || die "no instruction count in $dump"
    PER_REQUEST[$name]=$((instructions / REQUESTS))
    log "$name: ${PER_REQUEST[$name]} instructions per request"
}

mkdir -p "$WORK/apps-fresh" "$WORK/apps-reuse"
cp "$HELLO_WASM" "$WORK/apps-fresh/hello.wasm"
cp "$HELLO_WASM" "$WORK/apps-reuse/hello.wasm"
echo "reuse = $REUSE" >"$WORK/apps-reuse/hello.toml"
# meshd's compile cache is filled once, outside callgrind: the counted
# servers all start from a warm cache (wasmtime serve has its own).
start_meshd "$WORK/fill.log" --apps "$WORK/apps-fresh" --cache-dir "$WORK/cache" \
    --data-dir "$WORK/data-fill" --no-watch
stop_meshd

port="$(free_port)"
count native "$port" "$NATIVE" "$HOST:$port"
for mode in fresh reuse; do
    reuse=1
    [[ "$mode" == reuse ]] && reuse="$REUSE"
    port="$(free_port)"
    count "wasmtime-serve-$mode" "$port" "$WASMTIME" serve -Scli \
        --max-instance-reuse-count "$reuse" --addr "$HOST:$port" "$HELLO_WASM"
    port="$(free_port)"
    count "meshd-$mode" "$port" "$MESHD" --apps "$WORK/apps-$mode" --listen "$HOST:$port" \
        --cache-dir "$WORK/cache" --data-dir "$WORK/data-$mode" --no-watch --workers 1
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
{
    echo "Instructions per request, hello (callgrind, $REQUESTS requests after $WARMUP_REQUESTS;" \
        "meshd: $MESHD_REV; $(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "| server | instructions per request | / native |"
    echo "|---|---:|---:|"
    for name in native wasmtime-serve-fresh meshd-fresh wasmtime-serve-reuse meshd-reuse; do
        echo "| $name | ${PER_REQUEST[$name]} | $(ratio "${PER_REQUEST[$name]}" "${PER_REQUEST[native]}")x |"
    done
    echo
    echo "| ratio | value |"
    echo "|---|---:|"
    echo "| meshd / wasmtime serve, fresh instance | $(ratio "${PER_REQUEST[meshd-fresh]}" "${PER_REQUEST[wasmtime-serve-fresh]}")x |"
    echo "| meshd / wasmtime serve, reuse = $REUSE | $(ratio "${PER_REQUEST[meshd-reuse]}" "${PER_REQUEST[wasmtime-serve-reuse]}")x |"
    echo "| meshd / native, reuse = $REUSE | $(ratio "${PER_REQUEST[meshd-reuse]}" "${PER_REQUEST[native]}")x |"
} | tee "$WORK/table.md"
[[ -z "${BENCH_OUT:-}" ]] || cp "$WORK/table.md" "$BENCH_OUT"

summary_row "reuse = $REUSE: meshd instructions per request (native ${PER_REQUEST[native]})" \
    "${PER_REQUEST[meshd-reuse]} ($(ratio "${PER_REQUEST[meshd-reuse]}" "${PER_REQUEST[native]}")x native)" "(measured)" "-"
summary_row "fresh instance: meshd instructions per request / wasmtime serve's" \
    "$(ratio "${PER_REQUEST[meshd-fresh]}" "${PER_REQUEST[wasmtime-serve-fresh]}")x" "(measured)" "-"
