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
#   1. a first meshd compiles every app into the empty cache and is stopped;
#   2. a second meshd (warm cache on disk, its files dropped from the page
#      cache first) is measured: start-up time, VmRSS /
#      RssAnon / RssFile after IDLE seconds, then one GET to every app (each
#      must answer 200), then the memory again;
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
#   LIMIT        the cgroup's memory limit                 (default 200M)
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
LIMIT="${LIMIT:-200M}"
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

# --- measuring ---------------------------------------------------------------

CACHE="$WORK/cache"
DATA="$WORK/data"
ARGS=(--apps "$APPS" --cache-dir "$CACHE" --data-dir "$DATA" --no-watch)

# Requests every app once; prints how many answered 200.
request_every_app() {
    local ok=0 i status
    for ((i = 0; i < TENANTS; i++)); do
        status="$(curl -s -o /dev/null -w '%{http_code}' "http://$MESHD_ADDR/$(printf 'app%04d' "$i")/")" || status=000
        [[ "$status" == 200 ]] && ok=$((ok + 1))
    done
    echo "$ok"
}

declare -A STARTUP RSS_IDLE RSS_AFTER SERVED

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

# measure_config NAME: start meshd (MESHD may be the cgroup wrapper), read its
# memory idle, request every app, read it again, stop it.
measure_config() {
    local name="$1"
    evict_cache_pages
    start_meshd "$WORK/meshd-$name.log" "${ARGS[@]}"
    STARTUP[$name]="$MESHD_STARTUP"
    log "$name: listening after ${MESHD_STARTUP} s ($(grep -o 'apps=[0-9]* failed=[0-9]*' "$WORK/meshd-$name.log" | head -n1))"
    sleep "$IDLE"
    RSS_IDLE[$name]="$(rss_mb "$MESHD_PID")"
    log "$name: idle VmRSS/RssAnon/RssFile ${RSS_IDLE[$name]} MB"
    SERVED[$name]="$(request_every_app)"
    RSS_AFTER[$name]="$(rss_mb "$MESHD_PID")"
    log "$name: $((SERVED[$name])) of $TENANTS apps answered 200; VmRSS/RssAnon/RssFile ${RSS_AFTER[$name]} MB"
    stop_meshd
}

log "first start: compiling $TENANTS apps into an empty cache"
start_meshd "$WORK/meshd-fill.log" "${ARGS[@]}"
FILL_STARTUP="$MESHD_STARTUP"
log "cache filled in ${FILL_STARTUP} s ($(du -sh "$CACHE" | cut -f1))"
stop_meshd

measure_config free

MEMCG_NOTE=""
if mkdir "$MEMCG" 2>/dev/null; then
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
    echo "apps: $TENANTS distinct copies of hello.wasm (a custom section each); warm cache; first start (compiling all) took ${FILL_STARTUP} s"
    echo
    echo "| meshd | start-up (s) | VmRSS / RssAnon / RssFile idle (MB) | apps answering 200 | VmRSS / RssAnon / RssFile after (MB) |"
    echo "|---|---:|---|---:|---|"
    local name label
    for name in free limited; do
        [[ -n "${STARTUP[$name]:-}" ]] || continue
        case "$name" in
            free) label="no memory limit" ;;
            limited) label="in a memory cgroup of $LIMIT" ;;
        esac
        echo "| $label | ${STARTUP[$name]} | ${RSS_IDLE[$name]// / \/ } | ${SERVED[$name]} of $TENANTS | ${RSS_AFTER[$name]// / \/ } |"
    done
    echo
    if [[ -n "${STARTUP[limited]:-}" ]]; then
        echo "cgroup: limit $LIMIT, peak usage ${MEMCG_PEAK} MB (page cache included), limit hit ${MEMCG_FAILCNT} times, OOM kills ${MEMCG_OOM}"
    else
        echo "$MEMCG_NOTE"
    fi
}

echo
report
if [[ -n "${BENCH_OUT:-}" ]]; then
    report >"$BENCH_OUT"
fi
