#!/usr/bin/env bash
# Density with distinct apps: memory of one meshd serving TENANTS apps whose
# compiled code is not shared, unconstrained and then inside a memory cgroup.
#
#   bash bench/distinct.sh
#
# The tenants are copies of apps-example/hello (hello.wasm), each with one
# custom section of its own appended (name `steelmesh-bench`, payload its
# index), so every app has its own content hash: it compiles, is cached and is
# mapped separately (bench/scale.sh measures the shared case). Steps, all with
# the same --cache-dir:
#   1. a first meshd compiles every app into the empty cache (or CACHE_DIR),
#      waits until the artifact store in --data-dir holds every app's bytes
#      (meshd writes them in the background), and is stopped;
#      Unless CACHE_DIR was given, `wasmtime compile` then compiles the same
#      files, as many at once as there are cores, for the cold-cache ratio
#      (COMPARE_COMPILE=0 skips it);
#   2. a second meshd (warm cache on disk, its files dropped from the page
#      cache first; with --idle-unload IDLE_UNLOAD) is measured: start-up
#      time, VmRSS / RssAnon / RssFile after IDLE seconds, then one GET to
#      every app (each must answer 200; apps that passed their check before
#      start unloaded, so this is their first request: its latency p50/p99
#      is reported), then the memory again, and once more after the idle
#      unload has dropped the code (meshd_code_loaded_versions back to 0, at
#      most 3 x IDLE_UNLOAD + 10 s later). Before the idle unload, with
#      every app loaded, wrk measures /app0000/; a meshd serving app0000
#      alone (same cache) is measured the same way just before and just
#      after that run, and the loaded run is compared with their mean;
#   3. if the cgroup v1 memory controller is writable here (it is on the
#      build machine, as root), the same as 2 with meshd inside a memory
#      cgroup limited to LIMIT: the kernel must then reclaim what does not
#      fit. Reported: every app answered or not, the cgroup's peak usage
#      (memory.max_usage_in_bytes, which counts page cache too), how often
#      the limit was hit (memory.failcnt), and whether the OOM killer fired.
#
# Environment (all optional):
#   TENANTS      how many distinct apps                    (default 1000)
#   IDLE         seconds idle before the idle reading      (default 2)
#   IDLE_UNLOAD  --idle-unload of the measured meshd, or "off" (a meshd
#                without the flag: older builds)           (default 20s)
#   CACHE_DIR    use (and keep) this compile cache, e.g. one filled by an
#                earlier run, instead of a fresh one       (default: fresh)
#   THROUGHPUT   0: skip the throughput of one app with every app loaded
#                against the same app alone                (default 1)
#   DURATION, WARMUP, CONNECTIONS  that wrk run             (10s, 2s, 32)
#   LIMITED      0: skip the run in a memory cgroup        (default 1)
#   LIMIT        the cgroup's memory limit (default 200M, or 100 KB per
#                app past 2,000 apps: 1000M at 10,000)
#   FILL_TIMEOUT seconds the first (filling) start may take before it
#                listens                          (default 300 + 1 per app)
#   BENCH_OUT    also write the result tables (markdown) to this file
#   MESHD, MESHD_LABEL, MESHD_PROFILE  measure a given meshd binary, or the
#                  work tree built in another profile (as in bench/rps.sh)
#
# meshd listens on 127.0.0.1 only; the cgroup is removed at exit.
set -euo pipefail
BENCH_NAME=distinct
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TENANTS="${TENANTS:-1000}"
IDLE="${IDLE:-2}"
IDLE_UNLOAD="${IDLE_UNLOAD:-20s}"
LIMITED="${LIMITED:-1}"
# What cannot be reclaimed (no swap) must fit: about 85 KB of anonymous memory
# per loaded app on top of meshd's own, so 200M up to 2,000 apps, then more.
LIMIT="${LIMIT:-$((TENANTS > 2000 ? TENANTS / 10 : 200))M}"
THROUGHPUT="${THROUGHPUT:-1}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-32}"
((TENANTS >= 1 && TENANTS <= 10000)) || die "TENANTS must be 1..10000"
MEMCG_ROOT=/sys/fs/cgroup/memory
MEMCG="$MEMCG_ROOT/steelmesh-bench-$$"

need_tools
find_meshd
need_guests hello
check_idle_machine

remove_memcg() {
    if [[ -d "$MEMCG" ]]; then
        rmdir "$MEMCG" 2>/dev/null || log "warning: could not remove $MEMCG"
    fi
}
trap 'cleanup; remove_memcg' EXIT

# --- the apps ----------------------------------------------------------------

APPS="$WORK/apps"
mkdir -p "$APPS"
log "writing $TENANTS distinct copies of hello.wasm"
python3 - "$GUESTS/hello.wasm" "$APPS" "$TENANTS" <<'PY'
import sys

def leb128(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)

source, apps, tenants = sys.argv[1], sys.argv[2], int(sys.argv[3])
wasm = open(source, "rb").read()
name = b"steelmesh-bench"
for i in range(tenants):
    content = leb128(len(name)) + name + str(i).encode()
    section = b"\x00" + leb128(len(content)) + content
    with open(f"{apps}/app{i:04d}.wasm", "wb") as f:
        f.write(wasm + section)
PY

# The files are older than a restart would find them: meshd indexes a file
# only once it has been quiet for 2 s (crates/meshd-reload/src/dir_index.rs),
# so without this wait the fill start would index none of them and the
# measured start would read and hash all of them, as the first start after a
# deploy does.
sleep 3

# --- measuring ---------------------------------------------------------------

CACHE="${CACHE_DIR:-$WORK/cache}"
DATA="$WORK/data"
ARGS=(--apps "$APPS" --cache-dir "$CACHE" --data-dir "$DATA" --no-watch
    --metrics-listen "$HOST:0")
MEASURE_ARGS=()
[[ "$IDLE_UNLOAD" == off ]] || MEASURE_ARGS=(--idle-unload "$IDLE_UNLOAD")

# Requests every app once, in order, on one keep-alive connection; prints
# how many answered 200 and the latency of the requests in ms: p50 p99 max.
request_every_app() {
    python3 - "$MESHD_ADDR" "$TENANTS" <<'PY'
import http.client, sys, time
host, port = sys.argv[1].rsplit(":", 1)
tenants = int(sys.argv[2])
connect = lambda: http.client.HTTPConnection(host, int(port), timeout=60)
conn, ok, took = connect(), 0, []
for i in range(tenants):
    start = time.perf_counter()
    try:
        conn.request("GET", f"/app{i:04d}/")
        resp = conn.getresponse()
        resp.read()
        ok += resp.status == 200
    except Exception:
        conn.close()
        conn = connect()
    took.append((time.perf_counter() - start) * 1000)
took.sort()
at = lambda q: took[min(len(took) - 1, int(q * len(took)))]
print(ok, f"{at(0.50):.2f}", f"{at(0.99):.2f}", f"{took[-1]:.2f}")
PY
}

# The value of metric NAME (no labels) of the running meshd, or "n/a".
meshd_metric() {
    local url
    url="$(grep -o -m1 'metrics listening on http://[0-9.:]*/metrics' "$MESHD_LOG" | sed 's/.* on //')"
    curl -s "$url" | awk -v name="$1" '$1 == name { print $2; found = 1 } END { if (!found) print "n/a" }'
}

# Waits until no version's code is loaded (at most 3 x IDLE_UNLOAD + 10 s).
wait_for_idle_unload() {
    local seconds limit waited=0 loaded
    seconds="$(awk -v d="$IDLE_UNLOAD" 'BEGIN { n = d + 0; if (d ~ /ms$/) n /= 1000; else if (d ~ /m$/) n *= 60; printf "%d", n + 0.999 }')"
    limit=$((3 * seconds + 10))
    while ((waited < limit)); do
        loaded="$(meshd_metric meshd_code_loaded_versions)"
        [[ "$loaded" == 0 ]] && break
        sleep 1
        waited=$((waited + 1))
    done
    echo "$loaded"
}

declare -A STARTUP RSS_IDLE RSS_AFTER RSS_UNLOADED SERVED FIRST_P50 FIRST_P99 FIRST_MAX
declare -A LOADED_AFTER LOADED_UNLOADED RELOAD_P50 RELOAD_P99 RELOAD_MAX RELOAD_SERVED

# Drops the cache files' pages from the page cache (they are clean), so each
# measured meshd maps its code from disk and, in the cgroup, is charged for
# the page cache it brings in (v1 charges a page to the group that first
# loads it).
evict_cache_pages() {
    python3 - "$CACHE" <<'PY'
import os, sys
for entry in os.scandir(sys.argv[1]):
    if entry.is_file():
        fd = os.open(entry.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
PY
}

# measure_one_app NAME: wrk on /app0000/ of the running meshd, after a
# warm-up; the result lands in RPS[NAME], P99[NAME], ...
measure_one_app() {
    local url="http://$MESHD_ADDR/app0000/"
    wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" "$url" >/dev/null
    MEASURE_PID="$MESHD_PID" measure "$1" "$url" -t1 -c"$CONNECTIONS" -d"$DURATION"
}

# measure_alone NAME: a meshd serving app0000 alone, from the same cache,
# measured as above.
measure_alone() {
    local dir="$WORK/alone"
    mkdir -p "$dir/apps"
    cp "$APPS/app0000.wasm" "$dir/apps/"
    start_meshd "$WORK/meshd-$1.log" --apps "$dir/apps" --cache-dir "$CACHE" \
        --data-dir "$dir/data" --no-watch
    measure_one_app "$1"
    stop_meshd
}

# measure_config NAME: start meshd (MESHD may be the cgroup wrapper), read its
# memory idle, request every app, read it again, stop it.
measure_config() {
    local name="$1" served
    evict_cache_pages
    MESHD_LOG="$WORK/meshd-$name.log"
    start_meshd "$MESHD_LOG" "${ARGS[@]}" "${MEASURE_ARGS[@]}"
    STARTUP[$name]="$MESHD_STARTUP"
    log "$name: listening after ${MESHD_STARTUP} s ($(grep -o 'apps=[0-9]* failed=[0-9]*' "$MESHD_LOG" | head -n1); $(grep -c 'cache=unloaded' "$MESHD_LOG") left unloaded until first use)"
    sleep "$IDLE"
    RSS_IDLE[$name]="$(rss_mb "$MESHD_PID")"
    log "$name: idle VmRSS/RssAnon/RssFile ${RSS_IDLE[$name]} MB; versions loaded: $(meshd_metric meshd_code_loaded_versions)"
    read -r served FIRST_P50[$name] FIRST_P99[$name] FIRST_MAX[$name] < <(request_every_app)
    SERVED[$name]="$served"
    RSS_AFTER[$name]="$(rss_mb "$MESHD_PID")"
    LOADED_AFTER[$name]="$(meshd_metric meshd_code_loaded_versions)"
    if [[ "$name" == free && "$THROUGHPUT" == 1 ]]; then
        measure_one_app loaded
    fi
    log "$name: $served of $TENANTS apps answered 200 (first request p50 ${FIRST_P50[$name]} ms, p99 ${FIRST_P99[$name]} ms, max ${FIRST_MAX[$name]} ms); VmRSS/RssAnon/RssFile ${RSS_AFTER[$name]} MB; versions loaded: ${LOADED_AFTER[$name]}"
    if [[ "$IDLE_UNLOAD" != off ]]; then
        LOADED_UNLOADED[$name]="$(wait_for_idle_unload)"
        RSS_UNLOADED[$name]="$(rss_mb "$MESHD_PID")"
        log "$name: after the idle unload ($IDLE_UNLOAD): versions loaded ${LOADED_UNLOADED[$name]}; VmRSS/RssAnon/RssFile ${RSS_UNLOADED[$name]} MB"
        # Every app again: each request reloads its app's code (now the
        # cache entries are in the page cache).
        read -r served RELOAD_P50[$name] RELOAD_P99[$name] RELOAD_MAX[$name] < <(request_every_app)
        RELOAD_SERVED[$name]="$served"
        log "$name: after the unload, $served of $TENANTS apps answered 200 (request that reloads p50 ${RELOAD_P50[$name]} ms, p99 ${RELOAD_P99[$name]} ms, max ${RELOAD_MAX[$name]} ms)"
    fi
    stop_meshd
}

log "first start: compiling $TENANTS apps into the cache (empty unless CACHE_DIR was given)"
# A cold fill compiles every app before meshd listens: 0.1-0.15 s per app on
# 2 cores here, so the usual start timeout would cut it off past ~2,000 apps.
START_TIMEOUT="${FILL_TIMEOUT:-$((300 + TENANTS))}" start_meshd "$WORK/meshd-fill.log" "${ARGS[@]}"
FILL_STARTUP="$MESHD_STARTUP"
# meshd keeps each directory app's bytes and its version list in the
# artifact store (--data-dir) in the background after it went live: wait for
# the lists (each is written after its bytes), so the measured start finds a
# warm data directory too, as any restart does, and writes nothing.
for ((waited = 0; waited < 600; waited++)); do
    stored="$(find "$DATA/artifacts/apps" -name '*.json' 2>/dev/null | wc -l)"
    ((stored >= TENANTS)) && break
    sleep 1
done
log "the artifact store lists $stored apps' versions after ${waited} s more"
log "cache filled in ${FILL_STARTUP} s ($(du -sh "$CACHE" | cut -f1))"
stop_meshd

# The same files compiled by `wasmtime compile` (the version meshd embeds,
# with meshd's codegen setting: epoch interruption), one process per file,
# as many at once as meshd loads apps at once (--load-parallelism: one per
# core). Each output overwrites the last of its worker: only the time counts.
COMPILE_RATIO=""
if [[ "${COMPARE_COMPILE:-1}" == 1 && -z "${CACHE_DIR:-}" ]]; then
    need_wasmtime_cli
    log "wasmtime compile: the same $TENANTS files, $(nproc) at a time"
    COMPILE_T0="$EPOCHREALTIME"
    find "$APPS" -name '*.wasm' -print0 |
        COMPILE_OUT="$WORK" xargs -0 -P "$(nproc)" -n 64 sh -c 'out="$COMPILE_OUT/w$$.cwasm"; for f; do "$0" compile -W epoch-interruption=y "$f" -o "$out" || exit 255; done; rm -f "$out"' "$WASMTIME"
    WASMTIME_COMPILE="$(awk -v a="$EPOCHREALTIME" -v b="$COMPILE_T0" 'BEGIN { printf "%.3f", a - b }')"
    COMPILE_RATIO="$(ratio "$FILL_STARTUP" "$WASMTIME_COMPILE")"
    log "wasmtime compile took ${WASMTIME_COMPILE} s; meshd's cold start ${FILL_STARTUP} s (${COMPILE_RATIO}x)"
fi

[[ "$THROUGHPUT" == 1 ]] && measure_alone alone1
measure_config free
[[ "$THROUGHPUT" == 1 ]] && measure_alone alone2

MEMCG_NOTE=""
if [[ "$LIMITED" == 0 ]]; then
    MEMCG_NOTE="(LIMITED=0: the run in a memory cgroup was skipped)"
elif mkdir "$MEMCG" 2>/dev/null; then
    echo "$LIMIT" >"$MEMCG/memory.limit_in_bytes"
    # Page cache counts against a v1 memory cgroup; swap is off here.
    WRAPPER="$WORK/meshd-in-cgroup"
    printf '#!/bin/sh\necho $$ > %s/cgroup.procs\nexec %s "$@"\n' "$MEMCG" "$MESHD" >"$WRAPPER"
    chmod +x "$WRAPPER"
    REAL_MESHD="$MESHD"
    MESHD="$WRAPPER"
    measure_config limited
    MESHD="$REAL_MESHD"
    MEMCG_PEAK="$(awk '{ printf "%.1f", $1 / 1e6 }' "$MEMCG/memory.max_usage_in_bytes")"
    MEMCG_FAILCNT="$(cat "$MEMCG/memory.failcnt")"
    MEMCG_OOM="$(awk '/^oom_kill / { print $2 }' "$MEMCG/memory.oom_control")"
    MEMCG_OOM="${MEMCG_OOM:-unknown}"
else
    MEMCG_NOTE="(no writable cgroup v1 memory controller at $MEMCG_ROOT: the limited run was skipped)"
    log "$MEMCG_NOTE"
fi

# --- report ------------------------------------------------------------------

report() {
    machine_lines
    echo "apps: $TENANTS distinct copies of hello.wasm (a custom section each); warm cache; first start (into the cache${CACHE_DIR:+ $CACHE_DIR, given warm}) took ${FILL_STARTUP} s; measured meshd run with --idle-unload $IDLE_UNLOAD"
    if [[ -n "$COMPILE_RATIO" ]]; then
        echo "cold cache: meshd compiled and checked every app and listened after ${FILL_STARTUP} s; \`wasmtime compile -W epoch-interruption=y\` of the same files, $(nproc) at a time, took ${WASMTIME_COMPILE} s (${COMPILE_RATIO}x)"
    fi
    echo
    echo "| meshd | start-up (s) | VmRSS / RssAnon / RssFile idle (MB) | apps answering 200 | first request p50 / p99 / max (ms) | VmRSS / RssAnon / RssFile after (MB), versions loaded | after the idle unload (MB), versions loaded | then every app again: answering 200, reload p50 / p99 / max (ms) |"
    echo "|---|---:|---|---:|---|---|---|---|"
    local name label unloaded_cell
    for name in free limited; do
        [[ -n "${STARTUP[$name]:-}" ]] || continue
        case "$name" in
            free) label="no memory limit" ;;
            limited) label="in a memory cgroup of $LIMIT" ;;
        esac
        unloaded_cell=n/a
        if [[ -n "${RSS_UNLOADED[$name]:-}" ]]; then
            unloaded_cell="${RSS_UNLOADED[$name]// / \/ }, ${LOADED_UNLOADED[$name]}"
        fi
        echo "| $label | ${STARTUP[$name]} | ${RSS_IDLE[$name]// / \/ } | ${SERVED[$name]} of $TENANTS | ${FIRST_P50[$name]} / ${FIRST_P99[$name]} / ${FIRST_MAX[$name]} | ${RSS_AFTER[$name]// / \/ }, ${LOADED_AFTER[$name]} | $unloaded_cell | ${RELOAD_SERVED[$name]:-n/a}${RELOAD_SERVED[$name]:+, ${RELOAD_P50[$name]} / ${RELOAD_P99[$name]} / ${RELOAD_MAX[$name]}} |"
    done
    echo
    if [[ "$THROUGHPUT" == 1 ]]; then
        echo "one app (/app0000/, wrk -t1 -c$CONNECTIONS -d$DURATION after a $WARMUP warm-up) with all $TENANTS apps loaded: $(thousands "${RPS[loaded]}") req/s, p99 ${P99[loaded]} ms; alone, before and after: $(thousands "${RPS[alone1]}") and $(thousands "${RPS[alone2]}") req/s, p99 ${P99[alone1]} and ${P99[alone2]} ms; ratio to their mean ${LOADED_RATIO}x"
        echo
    fi
    if [[ -n "${STARTUP[limited]:-}" ]]; then
        echo "cgroup: limit $LIMIT, peak usage ${MEMCG_PEAK} MB (page cache included), limit hit ${MEMCG_FAILCNT} times, OOM kills ${MEMCG_OOM}"
    else
        echo "$MEMCG_NOTE"
    fi
}

LOADED_RATIO=""
if [[ "$THROUGHPUT" == 1 ]]; then
    LOADED_RATIO="$(ratio "${RPS[loaded]}" "$(((RPS[alone1] + RPS[alone2]) / 2))")"
fi

echo
report
if [[ -n "${BENCH_OUT:-}" ]]; then
    report >"$BENCH_OUT"
fi

# --- summary rows (issue #17 items 1 and 2, the unconstrained run) ------------

met() { awk -v v="$1" -v t="$2" 'BEGIN { print (v != "" && v <= t) ? "yes" : "no" }'; }
read -r _ IDLE_ANON _ <<<"${RSS_IDLE[free]}"
read -r IDLE_RSS _ _ <<<"${RSS_IDLE[free]}"
summary_row "$TENANTS apps, warm cache: start-up until listening" "${STARTUP[free]} s" "<= 3 s" "$(met "${STARTUP[free]}" 3)"
summary_row "$TENANTS apps idle: RssAnon" "$IDLE_ANON MB" "<= 300 MB" "$(met "$IDLE_ANON" 300)"
summary_row "$TENANTS apps idle: VmRSS" "$IDLE_RSS MB" "<= 1000 MB" "$(met "$IDLE_RSS" 1000)"
summary_row "first request to a not-yet-loaded app: p99 (p50 ${FIRST_P50[free]} ms)" "${FIRST_P99[free]} ms" "<= 5 ms" "$(met "${FIRST_P99[free]}" 5)"
if [[ -n "$COMPILE_RATIO" ]]; then
    summary_row "$TENANTS apps, cold cache: meshd start-up / wasmtime compile (${FILL_STARTUP} s / ${WASMTIME_COMPILE} s, $(nproc) at a time)" "${COMPILE_RATIO}x" "<= 1.1x" "$(met "$COMPILE_RATIO" 1.1)"
fi
if [[ -n "$LOADED_RATIO" ]]; then
    summary_row "req/s of one app with all $TENANTS loaded / alone" "${LOADED_RATIO}x" ">= 0.95x" "$(met 0.95 "$LOADED_RATIO")"
fi
summary_row "every app answered its first request" "${SERVED[free]} of $TENANTS" "all" "$([[ "${SERVED[free]}" == "$TENANTS" ]] && echo yes || echo no)"
if [[ -n "${RELOAD_SERVED[free]:-}" ]]; then
    summary_row "request that reloads after --idle-unload: p99 (p50 ${RELOAD_P50[free]} ms)" "${RELOAD_P99[free]} ms" "-" "-"
    summary_row "every app answered after its idle unload" "${RELOAD_SERVED[free]} of $TENANTS" "all" "$([[ "${RELOAD_SERVED[free]}" == "$TENANTS" ]] && echo yes || echo no)"
fi
if [[ -n "${RSS_UNLOADED[free]:-}" ]]; then
    read -r AFTER_RSS _ _ <<<"${RSS_AFTER[free]}"
    read -r UNLOADED_RSS _ _ <<<"${RSS_UNLOADED[free]}"
    summary_row "VmRSS after serving every app -> after --idle-unload $IDLE_UNLOAD" "$AFTER_RSS -> $UNLOADED_RSS MB" "falls" \
        "$(awk -v a="$AFTER_RSS" -v b="$UNLOADED_RSS" 'BEGIN { print (b < a) ? "yes" : "no" }')"
fi
if [[ "$THROUGHPUT" == 1 ]]; then
    check_results alone1 loaded alone2 || exit 1
fi
