#!/usr/bin/env bash
# Heavy guests: Python and JavaScript apps with a fresh instance per request,
# meshd against `wasmtime serve` on the same files, in one run (issue #19).
#
#   bash bench/heavy.sh
#
# The apps are bench/heavy/python/app.py and bench/heavy/js/app.js: the
# smallest wasi:http/proxy "hello" in each language, built with the
# toolchains of apps-example/python and apps-example/js (componentize-py,
# ComponentizeJS; installed by their build.sh on first use) into
# target/bench/heavy/, rebuilt only when a source changes. For each language:
#   - `wasmtime serve -Scli` (the same wasmtime version; a fresh instance per
#     request, its default);
#   - meshd with no manifest (a fresh instance per request; no cpu cap by
#     default).
# Each: a WARMUP of wrk, then wrk -t1 -cCONNECTIONS for DURATION, with the
# server's own CPU time and minor page faults per request (/proc/PID/stat).
# Then memory: meshd with PY_APPS copies of the Python app (identical bytes,
# so one compiled copy), idle after start-up, and after one GET to each.
#
# Environment (all optional):
#   DURATION     wrk measurement                       (default 5s)
#   WARMUP       wrk warm-up before each measurement   (default 1s)
#   CONNECTIONS  wrk connections                       (default 8)
#   PY_APPS      Python apps for the memory reading    (default 100)
#   BENCH_OUT    also write the result table (markdown) to this file
#   MESHD, MESHD_LABEL, MESHD_PROFILE  measure a given meshd binary, or the
#                  work tree built in another profile (as in bench/rps.sh)
#
# Everything listens on 127.0.0.1 only; all load is bounded in time.
set -euo pipefail
BENCH_NAME=heavy
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-5s}"
WARMUP="${WARMUP:-1s}"
CONNECTIONS="${CONNECTIONS:-8}"
PY_APPS="${PY_APPS:-100}"
HEAVY="$REPO/target/bench/heavy"

trap 'stop_server; cleanup' EXIT

need_tools
find_meshd
need_wasmtime_cli

# build_app NAME BUILD_SCRIPT SRC: target/bench/heavy/NAME.wasm from SRC,
# rebuilt only when SRC (or the build script) changed.
build_app() {
    local name="$1" script="$2" src="$3" stamp want
    stamp="$HEAVY/$name.src.sha256"
    want="$({
        cat "$script"
        if [[ -d "$src" ]]; then cat "$src"/*; else cat "$src"; fi
    } | sha256sum | cut -d' ' -f1)"
    if [[ -f "$HEAVY/$name.wasm" && "$(cat "$stamp" 2>/dev/null || true)" == "$want" ]]; then
        log "$name.wasm is up to date"
        return
    fi
    log "building $name.wasm"
    mkdir -p "$HEAVY"
    bash "$script" "$HEAVY" "$src" "wasi:http/proxy@0.2.12" "$name"
    echo "$want" >"$stamp"
}
build_app hello-py "$REPO/apps-example/python/build.sh" "$REPO/bench/heavy/python"
build_app hello-js "$REPO/apps-example/js/build.sh" "$REPO/bench/heavy/js/app.js"
check_idle_machine

PORT="${BENCH_PORT:-18280}"
wait_for_http() {
    local url="$1" i
    for ((i = 0; i < 600; i++)); do
        curl -sf -o /dev/null "$url" && return 0
        sleep 0.1
    done
    die "$url did not answer within 60 s"
}

# measure_server NAME URL PID: warm-up, then the measurement with the server's
# CPU and page faults.
measure_server() {
    local name="$1" url="$2" pid="$3"
    wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" "$url" >/dev/null
    MEASURE_PID="$pid" measure "$name" "$url" -t1 -c"$CONNECTIONS" -d"$DURATION"
}

for lang in py js; do
    wasm="$HEAVY/hello-$lang.wasm"
    log "wasmtime serve, hello-$lang"
    "$WASMTIME" serve -Scli --addr "$HOST:$PORT" "$wasm" >"$WORK/wasmtime-$lang.log" 2>&1 &
    SERVER_PID=$!
    wait_for_http "http://$HOST:$PORT/"
    measure_server "wasmtime-$lang" "http://$HOST:$PORT/" "$SERVER_PID"
    stop_server

    apps="$WORK/apps-$lang"
    mkdir -p "$apps"
    cp "$wasm" "$apps/hello.wasm"
    start_meshd "$WORK/meshd-$lang.log" --apps "$apps" --cache-dir "$WORK/cache" --data-dir "$WORK/data-$lang"
    wait_for_http "http://$MESHD_ADDR/hello/"
    measure_server "meshd-$lang" "http://$MESHD_ADDR/hello/" "$MESHD_PID"
    stop_meshd
done

# Memory: PY_APPS Python apps loaded and idle, then after one GET each.
apps="$WORK/apps-many-py"
mkdir -p "$apps"
for ((i = 0; i < PY_APPS; i++)); do
    cp "$HEAVY/hello-py.wasm" "$apps/py$i.wasm"
done
start_meshd "$WORK/meshd-many.log" --apps "$apps" --cache-dir "$WORK/cache" --data-dir "$WORK/data-many"
sleep 2
RSS_IDLE="$(rss_mb "$MESHD_PID")"
served=0
for ((i = 0; i < PY_APPS; i++)); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$MESHD_ADDR/py$i/")" == 200 ]] && served=$((served + 1))
done
RSS_AFTER="$(rss_mb "$MESHD_PID")"
stop_meshd

# --- report ------------------------------------------------------------------

report() {
    echo "# heavy guests: a fresh instance per request, Python and JavaScript"
    echo
    machine_lines
    echo "versions: $("$WASMTIME" --version); componentize-py $("$REPO/target/polyglot/venv/bin/componentize-py" --version 2>/dev/null | awk '{ print $2 }'); ComponentizeJS $(node -p "require('$REPO/apps-example/js/node_modules/@bytecodealliance/componentize-js/package.json').version" 2>/dev/null)"
    echo "apps: hello-py $(stat -c %s "$HEAVY/hello-py.wasm") bytes, hello-js $(stat -c %s "$HEAVY/hello-js.wasm") bytes; wrk -t1 -c$CONNECTIONS -d$DURATION after a $WARMUP warm-up"
    echo
    echo "| server | req/s | p50 (ms) | p99 (ms) | server CPU per request (us) | page faults per request | other CPU load (%) |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    local lang name label
    for lang in py js; do
        for name in "wasmtime-$lang" "meshd-$lang"; do
            case "$name" in
                wasmtime-*) label="\`wasmtime serve -Scli\`, hello-$lang" ;;
                *) label="meshd, hello-$lang, default settings" ;;
            esac
            echo "| $label | $(thousands "${RPS[$name]}") | ${P50[$name]} | ${P99[$name]} | ${CPU_US[$name]} | ${FAULTS[$name]} | ${OTHER[$name]} |"
        done
    done
    echo
    echo "| ratio | Python | JavaScript |"
    echo "|---|---:|---:|"
    echo "| meshd / wasmtime serve, req/s | $(ratio "${RPS[meshd-py]}" "${RPS[wasmtime-py]}") | $(ratio "${RPS[meshd-js]}" "${RPS[wasmtime-js]}") |"
    echo "| wasmtime serve / meshd, CPU per request | $(ratio "${CPU_US[wasmtime-py]}" "${CPU_US[meshd-py]}") | $(ratio "${CPU_US[wasmtime-js]}" "${CPU_US[meshd-js]}") |"
    echo
    local idle=($RSS_IDLE) after=($RSS_AFTER)
    echo "memory, $PY_APPS copies of hello-py (one compiled copy): VmRSS / RssAnon / RssFile idle ${idle[0]} / ${idle[1]} / ${idle[2]} MB; after one GET each ($served of $PY_APPS answered 200) ${after[0]} / ${after[1]} / ${after[2]} MB"
}
report | tee "$WORK/report.md"
[[ -n "${BENCH_OUT:-}" ]] && cp "$WORK/report.md" "$BENCH_OUT"

met() { awk -v v="$1" -v t="$2" 'BEGIN { print (v + 0 >= t ? "yes" : "no") }'; }
py_ratio="$(ratio "${RPS[meshd-py]}" "${RPS[wasmtime-py]}")"
js_ratio="$(ratio "${RPS[meshd-js]}" "${RPS[wasmtime-js]}")"
summary_row "Python hello, fresh instance: meshd / wasmtime serve" "${py_ratio}x" ">= 4x" "$(met "$py_ratio" 4)"
summary_row "JavaScript hello, fresh instance: meshd / wasmtime serve" "${js_ratio}x" ">= 4x" "$(met "$js_ratio" 4)"
summary_row "RSS, $PY_APPS Python apps idle (VmRSS / RssAnon)" "$(awk '{ print $1 " / " $2 " MB" }' <<<"$RSS_IDLE")" "<= today's + 20%" "-"
check_results wasmtime-py meshd-py wasmtime-js meshd-js
