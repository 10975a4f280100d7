# Helpers shared by the bench/ scripts (sourced,
# not run). Same conventions as bench/rps.sh: loopback only, bounded load,
# everything started is stopped by the EXIT trap, figures only from what was
# measured.
#
# The sourcing script sets `set -euo pipefail` first. It may set, before
# sourcing: BENCH_NAME (used in the temporary directory's name).

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST=127.0.0.1
GUESTS="$REPO/target/guests/wasm32-wasip2/release"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# --- cleanup -----------------------------------------------------------------

WORK="$(mktemp -d "${TMPDIR:-/tmp}/steelmesh-${BENCH_NAME:-bench}.XXXXXX")"
MESHD_PID=""
BG_PIDS=()

# Stops meshd: SIGTERM (graceful), then SIGKILL after 10 s.
stop_meshd() {
    if [[ -n "$MESHD_PID" ]]; then
        kill "$MESHD_PID" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$MESHD_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$MESHD_PID" 2>/dev/null || true
        wait "$MESHD_PID" 2>/dev/null || true
        MESHD_PID=""
    fi
}

# Stops the background helpers (load and swap loops) this script started.
stop_background() {
    local pid
    for pid in "${BG_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${BG_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    BG_PIDS=()
}

cleanup() {
    stop_background
    stop_meshd
    if [[ -n "${KEEP_WORK:-}" ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools -------------------------------------------------------------------

apt_install() {
    local pkg="$1"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    log "installing $pkg with apt-get"
    "${sudo[@]}" apt-get install -y "$pkg" >"$WORK/apt.log" 2>&1 || {
        "${sudo[@]}" apt-get update >>"$WORK/apt.log" 2>&1 &&
            "${sudo[@]}" apt-get install -y "$pkg" >>"$WORK/apt.log" 2>&1
    } || { cat "$WORK/apt.log" >&2; die "could not install $pkg"; }
}

need_tools() {
    command -v wrk >/dev/null || apt_install wrk
    command -v curl >/dev/null || apt_install curl
    command -v python3 >/dev/null || apt_install python3
}

# --- builds ------------------------------------------------------------------

# The build of meshd that is measured: a cargo profile, release-lto
# (Cargo.toml) by default, or `release` for the quicker build; or `pgo`, the
# profile-guided build of bench/pgo.sh (its PGO_PROFILE and PGO_DIR apply),
# which is what docs/operations.md recommends deploying.
MESHD_PROFILE="${MESHD_PROFILE:-release-lto}"

# Where the build named by MESHD_PROFILE puts meshd.
meshd_build_path() {
    if [[ "$MESHD_PROFILE" == pgo ]]; then
        echo "${PGO_DIR:-$REPO/target/pgo}/target-use/${PGO_PROFILE:-release-lto}/meshd"
    else
        echo "$REPO/target/$MESHD_PROFILE/meshd"
    fi
}

# How reports name that build.
meshd_build_label() {
    if [[ "$MESHD_PROFILE" == pgo ]]; then
        echo "profile-guided build (bench/pgo.sh) of the ${PGO_PROFILE:-release-lto} profile"
    else
        echo "$MESHD_PROFILE profile"
    fi
}

# Whether a source of meshd changed after FILE was written. Benches and
# integration tests are not part of the binary: editing them does not make
# it stale (nor start a profile-guided rebuild).
sources_newer_than() {
    [[ -n "$(find "$REPO/crates" "$REPO/Cargo.toml" "$REPO/Cargo.lock" \
        -type d \( -name benches -o -name tests \) -prune -o -newer "$1" -type f -print 2>/dev/null | head -n1)" ]]
}

# Builds meshd as MESHD_PROFILE says. A profile-guided build newer than the
# sources is kept: bench/pgo.sh trains anew and so rebuilds its second half
# every time (it says how long); delete the binary to force it.
build_meshd() {
    if [[ "$MESHD_PROFILE" == pgo ]]; then
        local built
        built="$(meshd_build_path)"
        if [[ -x "$built" ]] && ! sources_newer_than "$built"; then
            log "the profile-guided build $built is newer than the sources: measuring it"
            return
        fi
        log "building meshd with profile-guided optimisation (bench/pgo.sh)"
        bash "$REPO/bench/pgo.sh" >&2
    else
        log "building meshd ($MESHD_PROFILE; release-lto took 7 minutes cold on this 2-core machine)"
        (cd "$REPO" && nice -n 10 cargo build --profile "$MESHD_PROFILE" -p meshd)
    fi
}

# Sets MESHD (the binary) and MESHD_REV (how the report names it). Uses
# $MESHD if given, else the build MESHD_PROFILE names, building it only if
# missing.
find_meshd() {
    if [[ -n "${MESHD:-}" ]]; then
        [[ -x "$MESHD" ]] || die "MESHD=$MESHD is not an executable"
        MESHD_REV="${MESHD_LABEL:-given binary $MESHD}"
        snapshot_meshd
        return
    fi
    MESHD="$(meshd_build_path)"
    if [[ ! -x "$MESHD" ]]; then
        build_meshd
    fi
    MESHD_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown), $(meshd_build_label)"
    local dirty=""
    if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
        dirty=1
    fi
    if sources_newer_than "$MESHD"; then
        log "warning: sources changed after $MESHD was built; measuring the binary as it is" \
            "(build it again first to measure the sources)"
        MESHD_REV="$(meshd_build_label): binary of $(date -u -r "$MESHD" '+%Y-%m-%d %H:%M:%S UTC'), older than the sources at $MESHD_REV (so not a build of them)"
    elif [[ -n "$dirty" ]]; then
        MESHD_REV="$MESHD_REV with uncommitted changes"
    fi
    snapshot_meshd
}

# Copies the meshd to measure into the work directory, so a rebuild during the
# run cannot change what is measured, and names it by its SHA-256 too.
snapshot_meshd() {
    cp "$MESHD" "$WORK/meshd"
    MESHD="$WORK/meshd"
    MESHD_REV="$MESHD_REV; binary sha256 $(sha256sum "$MESHD" | cut -c1-12)"
}

# need_guests NAME...: makes sure target/guests/.../NAME.wasm exist, building
# the example guests only if one is missing.
need_guests() {
    local name missing=0
    for name in "$@"; do
        [[ -f "$GUESTS/$name.wasm" ]] || missing=1
    done
    if ((missing)); then
        log "building the example guests (wasm32-wasip2)"
        (cd "$REPO" && nice -n 10 cargo build --release --target wasm32-wasip2 \
            --manifest-path apps-example/Cargo.toml --target-dir target/guests)
    fi
    for name in "$@"; do
        [[ -f "$GUESTS/$name.wasm" ]] || die "no $GUESTS/$name.wasm after the guest build"
    done
}

# need_wasmtime_cli: sets WASMTIME to the `wasmtime` CLI at the version meshd
# embeds (read from Cargo.lock), installed under target/bench the first time
# (slow: a release build of wasmtime-cli).
need_wasmtime_cli() {
    local version root
    version="$(awk '$0 == "name = \"wasmtime\"" { getline; gsub(/[^0-9.]/, ""); print; exit }' "$REPO/Cargo.lock")"
    [[ -n "$version" ]] || die "cannot read the wasmtime version from Cargo.lock"
    root="$REPO/target/bench/wasmtime-cli"
    WASMTIME="$root/bin/wasmtime"
    if [[ -x "$WASMTIME" ]] && "$WASMTIME" --version | grep -q "^wasmtime $version\b"; then
        log "wasmtime $version already installed in $root"
    else
        log "installing wasmtime-cli $version into $root (slow the first time)"
        nice -n 10 cargo install wasmtime-cli --version "$version" --locked --force \
            --root "$root" --target-dir "$REPO/target/bench/wasmtime-cli-build"
    fi
}

# need_native_hello: sets NATIVE to bench/native-hello (a hyper server
# answering the hello greeting), built in release under target/bench.
need_native_hello() {
    log "building native-hello (release)"
    (cd "$REPO" && nice -n 10 cargo build --release --locked \
        --manifest-path bench/native-hello/Cargo.toml --target-dir "$REPO/target/bench")
    NATIVE="$REPO/target/bench/release/native-hello"
}

# free_port: a loopback port nobody is listening on, the first from
# NEXT_PORT up (the script sets NEXT_PORT, from its BENCH_PORT).
free_port() {
    local port="${NEXT_PORT:-18080}"
    while (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null; do
        port=$((port + 1))
    done
    NEXT_PORT=$((port + 1))
    echo "$port"
}

# A server under measurement other than the one in MESHD_PID (native hyper,
# wasmtime serve), one at a time, stopped like meshd. A script that uses it
# sets `trap 'stop_server; cleanup' EXIT`.
SERVER_PID=""
stop_server() {
    MESHD_PID="$SERVER_PID" stop_meshd
    SERVER_PID=""
}

# --- meshd -------------------------------------------------------------------

# start_meshd LOG_FILE ARGS...: starts meshd on a port of its choosing on
# 127.0.0.1, waits (at most START_TIMEOUT seconds, default 300) for its
# `meshd listening on` line. Sets MESHD_PID, MESHD_ADDR (host:port),
# MESHD_T0 (epoch seconds just before the start) and MESHD_STARTUP (seconds
# from then to the listening line's own timestamp).
start_meshd() {
    local log_file="$1"
    shift
    MESHD_T0="$EPOCHREALTIME"
    "$MESHD" --listen "$HOST:0" "$@" >"$log_file" 2>&1 &
    MESHD_PID=$!
    local line="" i
    for ((i = 0; i < ${START_TIMEOUT:-300} * 100; i++)); do
        line="$(grep -m1 'meshd listening on http://' "$log_file" 2>/dev/null || true)"
        [[ -n "$line" ]] && break
        kill -0 "$MESHD_PID" 2>/dev/null || { cat "$log_file" >&2; die "meshd exited before listening"; }
        sleep 0.01
    done
    [[ -n "$line" ]] || { tail -n 20 "$log_file" >&2; die "meshd not listening after ${START_TIMEOUT:-300} s"; }
    MESHD_ADDR="$(sed -n 's|.*meshd listening on http://\([0-9.]*:[0-9]*\).*|\1|p' <<<"$line")"
    [[ "$MESHD_ADDR" == "$HOST:"* ]] || die "meshd listens on '$MESHD_ADDR', not on $HOST"
    MESHD_STARTUP="$(awk -v a="$(log_epoch "$line")" -v b="$MESHD_T0" 'BEGIN { printf "%.3f", a - b }')"
}

# The timestamp of a meshd log line (text or JSON), in epoch seconds.
log_epoch() { date -d "$(grep -o -m1 '[0-9]\{4\}-[0-9-]*T[0-9:.]*Z' <<<"$1")" +%s.%N; }

# Resident memory of a process in MB (10^6 bytes; /proc/PID/status counts in
# KiB): VmRSS, RssAnon, RssFile, as "rss anon file".
rss_mb() {
    awk '/^VmRSS:/ { r = $2 } /^RssAnon:/ { a = $2 } /^RssFile:/ { f = $2 }
         END { k = 1024 / 1e6; printf "%.1f %.1f %.1f", r * k, a * k, f * k }' "/proc/$1/status"
}

# --- CPU accounting ----------------------------------------------------------

CLK_TCK="$(getconf CLK_TCK)"
# Busy time of all cores in processes (user, nice, system), in clock ticks;
# interrupt time is left out, as most of it is the benchmark's own traffic.
machine_jiffies() { awk '/^cpu / { print $2 + $3 + $4 }' /proc/stat; }
# CPU time (user + system, plus that of reaped children) of every process in
# this script's process group: meshd, wrk, curl, the helper loops and the
# script itself. A child that exits moves its time into its parent's, so the
# difference between two readings is what the group spent in between.
OWN_PGRP="$(sed 's/^.*) //' /proc/$$/stat | awk '{ print $3 }')"
group_jiffies() {
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } |
        awk -v pg="$OWN_PGRP" '{ sub(/^.*\) /, ""); if ($3 == pg) s += $12 + $13 + $14 + $15 } END { print s + 0 }'
}

# cpu_window_start / cpu_window_end: "other CPU load" over the window, in %
# of one core: CPU time spent by anything outside this benchmark's process
# group. Sets OTHER_CPU.
cpu_window_start() {
    CPU_B0="$(machine_jiffies)" CPU_G0="$(group_jiffies)" CPU_T0="$EPOCHREALTIME"
}
cpu_window_end() {
    local b1 g1 t1
    b1="$(machine_jiffies)" g1="$(group_jiffies)" t1="$EPOCHREALTIME"
    OTHER_CPU="$(awk -v b="$((b1 - CPU_B0))" -v g="$((g1 - CPU_G0))" -v hz="$CLK_TCK" \
        -v t0="$CPU_T0" -v t1="$t1" 'BEGIN {
            o = (b - g) / hz; if (o < 0) o = 0
            printf "%.0f", 100 * o / (t1 - t0)
        }')"
}

# How busy the whole machine is over one second, in %.
cpu_busy_percent() {
    local a b
    read -r -a a < <(grep '^cpu ' /proc/stat)
    sleep 1
    read -r -a b < <(grep '^cpu ' /proc/stat)
    awk -v a="${a[*]}" -v b="${b[*]}" 'BEGIN {
        n = split(a, x, " "); split(b, y, " ")
        for (i = 2; i <= n; i++) { d = y[i] - x[i]; total += d; if (i == 5 || i == 6) idle += d }
        printf "%.0f", (total > 0 ? 100 * (total - idle) / total : 0)
    }'
}

check_idle_machine() {
    BUSY_BEFORE="$(cpu_busy_percent)"
    if ((BUSY_BEFORE > 15)); then
        log "warning: the machine is already ${BUSY_BEFORE}% busy; the figures will be low and noisy"
    fi
}

# --- wrk ---------------------------------------------------------------------

# Latency as wrk prints it (e.g. 512.00us, 1.20ms, 1.01s) -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.3f", n
    }'
}

declare -A RPS P50 P99 NON2XX SOCKERR OTHER REQS

# parse_wrk NAME FILE: reads wrk --latency output into the arrays above.
parse_wrk() {
    local name="$1" out="$2"
    RPS[$name]="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")"
    P50[$name]="$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")"
    P99[$name]="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")"
    REQS[$name]="$(awk '/requests in/ { print $1 }' "$out")"
    # Non-2xx/3xx answers and socket errors: a fast error is not a fast answer.
    NON2XX[$name]="$(awk '/Non-2xx or 3xx responses:/ { n += $NF } END { print n + 0 }' "$out")"
    SOCKERR[$name]="$(awk '/Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
                           END { print n + 0 }' "$out")"
    [[ -n "${RPS[$name]}" ]] || { cat "$out" >&2; die "cannot parse wrk's output for $name"; }
}

declare -A CPU_US FAULTS

# CPU time (user + system, in clock ticks) and minor page faults of a
# process so far, from /proc/PID/stat.
proc_ticks_and_faults() {
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13, $8 }'
}

# measure NAME URL WRK_ARGS...: one wrk measurement with --latency, with the
# other-CPU-load accounting; the results land in the arrays above. With
# MEASURE_PID set (the server's pid), also the server's CPU time and page
# faults per request (CPU_US, FAULTS).
measure() {
    local name="$1" url="$2"
    shift 2
    local out="$WORK/$name.wrk" t0=0 f0=0 t1 f1
    log "$name: wrk $* --latency $url"
    if [[ -n "${MEASURE_PID:-}" ]]; then
        read -r t0 f0 < <(proc_ticks_and_faults "$MEASURE_PID")
    fi
    cpu_window_start
    wrk "$@" --latency "$url" >"$out"
    cpu_window_end
    OTHER[$name]="$OTHER_CPU"
    parse_wrk "$name" "$out"
    CPU_US[$name]="n/a" FAULTS[$name]="n/a"
    if [[ -n "${MEASURE_PID:-}" ]] && ((REQS[$name] > 0)); then
        read -r t1 f1 < <(proc_ticks_and_faults "$MEASURE_PID")
        CPU_US[$name]="$(awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" -v n="${REQS[$name]}" 'BEGIN { printf "%.1f", 1e6 * t / hz / n }')"
        FAULTS[$name]="$(awk -v f="$((f1 - f0))" -v n="${REQS[$name]}" 'BEGIN { printf "%.1f", f / n }')"
    fi
    log "$name: ${RPS[$name]} req/s, p50 ${P50[$name]} ms, p99 ${P99[$name]} ms," \
        "non-2xx ${NON2XX[$name]}, socket errors ${SOCKERR[$name]}, other CPU ${OTHER[$name]}%," \
        "server CPU ${CPU_US[$name]} us/request, ${FAULTS[$name]} page faults/request"
}

# --- report ------------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
thousands() { echo "$1" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta'; }

machine_lines() {
    local cpu mem
    cpu="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    mem="$(free -h | awk '/^Mem:/ { print $2 }')"
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc) cores, ${cpu:-unknown CPU}, $mem memory, $(uname -sr)"
    echo "versions: meshd $MESHD_REV, $(wrk -v 2>&1 | head -n1 | awk '{ print $1, $2 }'), $(python3 --version 2>&1)"
    # Set, these make every Rust error meshd or wasmtime creates capture a
    # backtrace, which costs CPU per request (more with more apps loaded).
    echo "meshd's environment: RUST_BACKTRACE=${RUST_BACKTRACE-(unset)}, RUST_LIB_BACKTRACE=${RUST_LIB_BACKTRACE-(unset)}"
    # A number from check_idle_machine, or a word from a caller (bench/all.sh).
    local busy="$BUSY_BEFORE"
    [[ "$busy" =~ ^[0-9]+$ ]] && busy="$busy%"
    echo "CPU busy just before the runs: $busy; other CPU load = CPU time spent during a measurement by anything outside this benchmark (meshd, wrk, its clients and loops), in % of one core"
}

# Warns about skewed measurements; returns 1 if any had non-2xx answers or
# socket errors.
check_results() {
    local name bad=0
    for name in "$@"; do
        if ((OTHER[$name] > 15)); then
            log "warning: something else used ${OTHER[$name]}% of a core while $name was measured; its figures are skewed"
        fi
        if ((SOCKERR[$name] > 0)); then
            log "error: wrk saw ${SOCKERR[$name]} socket errors in $name"
            bad=1
        fi
        if ((NON2XX[$name] > 0)); then
            log "error: $name got ${NON2XX[$name]} non-2xx answers"
            bad=1
        fi
    done
    return "$bad"
}

# Adds one row to the summary table bench/all.sh prints (when it set
# BENCH_SUMMARY to a file): FIGURE (what was measured), VALUE (the measured
# figure, with its unit), TARGET (the issue's target, as text) and MET (yes,
# no, or - when there is no target).
summary_row() {
    [[ -n "${BENCH_SUMMARY:-}" ]] || return 0
    printf '%s\t%s\t%s\t%s\t%s\n' "${BENCH_NAME:-bench}" "$1" "$2" "$3" "$4" >>"$BENCH_SUMMARY"
}
