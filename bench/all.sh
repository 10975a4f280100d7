#!/usr/bin/env bash
# Every benchmark, one after another, and one table at the end: each figure
# an issue targets, what was measured, the target, and whether it is met.
#
#   bash bench/all.sh            # everything
#   ONLY="rps-fresh heavy" bash bench/all.sh
#
# On 2 cores all but `distinct` took about 18 minutes (2026-12-01: 12 for
# the other nine, 6 for rps-reuse-unpinned and tls); `distinct`
# compiles 10,000 apps twice with a cold cache (meshd, then `wasmtime
# compile` as its baseline), 1,000-1,500 s each (2026-11-30).
#
# The benchmarks (each compares against its own baseline in the same run;
# see its header for what it measures):
#   rps-fresh    ROUNDS=3 bench/rps.sh: hello, a fresh instance per request,
#                against native hyper and `wasmtime serve`, plus h2c
#   rps-reuse    PIN=1 ROUNDS=3 REUSE=1000 bench/rps.sh: the reuse path,
#                wrk on a core of its own
#   rps-reuse-unpinned  ROUNDS=3 REUSE=1000 bench/rps.sh: the same, wrk
#                and the servers sharing every core
#   instructions bench/instructions.sh: instructions per request under
#                callgrind, native hyper / wasmtime serve / meshd
#   instance     cargo bench -p meshd-tenant --bench instance (criterion):
#                one instantiation and one GET, medians, against wasmtime
#                alone (a bare Store on wasmtime's default engine)
#   scale        bench/scale.sh: 1,000 tenants against 1
#   distinct     bench/distinct.sh: distinct apps (TENANTS, default 10000)
#   swap         bench/swap.sh: throughput while swapping versions
#   noisy        bench/noisy.sh: hello next to spinning guests
#   heavy        bench/heavy.sh: Python and JavaScript, fresh instances
#   restart      bench/restart.sh: graceful restart of meshd
#   tls          REUSE=1000 bench/tls.sh: HTTPS against plain HTTP, h2 over
#                TLS against HTTPS/1.1
#
# Environment (all optional):
#   ONLY           the benchmarks to run, by the names above (default: all)
#   MESHD_PROFILE  the build of meshd, made once before all of them: a cargo
#                  profile (default release-lto; `release` builds much
#                  faster) or `pgo` (bench/pgo.sh, as deployed)
#   MESHD, MESHD_LABEL  measure this meshd binary instead of building one
#                  (a profile-guided build made elsewhere, an older commit);
#                  the instance bench still builds from the sources
#   BENCH_OUT      also write the final table (markdown) to this file
# Each benchmark's own report goes to target/bench/all/NAME.md and its
# output to NAME.log. A benchmark that fails is reported as such in the
# table; the others still run.
set -euo pipefail
BENCH_NAME=all
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ALL=(rps-fresh rps-reuse rps-reuse-unpinned instructions instance scale distinct swap noisy heavy restart tls)
read -r -a RUN <<<"${ONLY:-${ALL[*]}}"
OUT="$REPO/target/bench/all"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.tsv"
: >"$SUMMARY"

# One build for every script: each then measures this same binary.
if [[ -z "${MESHD:-}" ]]; then
    log "building meshd ($MESHD_PROFILE) once for every benchmark"
    build_meshd
fi
find_meshd
BUILT="$MESHD"
STARTED="$(date -u '+%Y-%m-%d %H:%M UTC')"

# run_bench NAME ENV... -- SCRIPT: one benchmark script, its rows appended to
# the summary; a failure becomes a row too.
run_bench() {
    local name="$1"
    shift
    local envs=()
    while [[ "$1" != "--" ]]; do
        envs+=("$1")
        shift
    done
    shift
    log "== $name: $* (${envs[*]:-default settings})"
    local t0="$SECONDS"
    if env "${envs[@]}" MESHD="$BUILT" MESHD_LABEL="$MESHD_REV" BENCH_SUMMARY="$SUMMARY" \
        BENCH_OUT="$OUT/$name.md" bash "$@" >"$OUT/$name.log" 2>&1; then
        log "== $name: done in $((SECONDS - t0)) s"
    else
        log "== $name: FAILED after $((SECONDS - t0)) s (see $OUT/$name.log)"
        printf '%s\t%s\t%s\t%s\t%s\n' "$name" "the benchmark itself" "failed (see $OUT/$name.log)" "runs" "no" >>"$SUMMARY"
    fi
}

# criterion's median of the bench NAME (group/function) in LOG, in us.
# criterion prints "NAME ... time:   [low median high]"; the name and the
# times share a line or not, depending on its length.
criterion_median_us() { # LOG NAME
    awk -v name="$2" 'index($0, name) == 1 { found = 1 } found && /time:/ { print; exit }' "$1" |
        sed -n 's/.*time: *\[[^ ]* [^ ]* \([^ ]*\) \([^ ]*\) .*/\1 \2/p' |
        awk '{ v = $1; if ($2 == "ns") v /= 1000; else if ($2 == "ms") v *= 1000; printf "%.2f", v }'
}

# The criterion bench of one instantiation (not a shell script): its median,
# and the same against its baseline in the same run, wasmtime alone (an
# engine of wasmtime's defaults and a bare Store: benches/instance.rs).
run_instance_bench() {
    log "== instance: cargo bench -p meshd-tenant --bench instance"
    local log_file="$OUT/instance.log"
    if (cd "$REPO" && nice -n 10 cargo bench -p meshd-tenant --bench instance) >"$log_file" 2>&1; then
        local name ours alone
        for name in instantiate handle; do
            ours="$(criterion_median_us "$log_file" "per_request/$name")"
            alone="$(criterion_median_us "$log_file" "wasmtime_alone/$name")"
            if [[ "$name" == instantiate ]]; then
                printf '%s\t%s\t%s\t%s\t%s\n' instance "one instantiation, median" "$ours us" "<= 10 us" \
                    "$(awk -v v="$ours" 'BEGIN { print (v + 0 <= 10 ? "yes" : "no") }')" >>"$SUMMARY"
            fi
            printf '%s\t%s\t%s\t%s\t%s\n' instance "$name, meshd / wasmtime alone (same run)" \
                "$(awk -v a="$ours" -v b="$alone" 'BEGIN { printf "%.3f (%s / %s us)", a / b, a, b }')" \
                "(measured, no target)" "-" >>"$SUMMARY"
        done
    else
        printf '%s\t%s\t%s\t%s\t%s\n' instance "the benchmark itself" "failed (see $log_file)" "runs" "no" >>"$SUMMARY"
    fi
}

BENCH_DIR="$REPO/bench"
for name in "${RUN[@]}"; do
    case "$name" in
        rps-fresh) run_bench rps-fresh ROUNDS=3 -- "$BENCH_DIR/rps.sh" ;;
        rps-reuse) run_bench rps-reuse PIN=1 ROUNDS=3 REUSE=1000 -- "$BENCH_DIR/rps.sh" ;;
        rps-reuse-unpinned) run_bench rps-reuse-unpinned ROUNDS=3 REUSE=1000 -- "$BENCH_DIR/rps.sh" ;;
        instructions) run_bench instructions -- "$BENCH_DIR/instructions.sh" ;;
        instance) run_instance_bench ;;
        scale) run_bench scale -- "$BENCH_DIR/scale.sh" ;;
        distinct) run_bench distinct TENANTS="${TENANTS:-10000}" -- "$BENCH_DIR/distinct.sh" ;;
        swap) run_bench swap -- "$BENCH_DIR/swap.sh" ;;
        noisy) run_bench noisy -- "$BENCH_DIR/noisy.sh" ;;
        heavy) run_bench heavy -- "$BENCH_DIR/heavy.sh" ;;
        restart) run_bench restart -- "$BENCH_DIR/restart.sh" ;;
        tls) run_bench tls REUSE=1000 -- "$BENCH_DIR/tls.sh" ;;
        *) die "unknown benchmark '$name' (known: ${ALL[*]})" ;;
    esac
done

table() {
    echo "# Steelmesh benchmarks: one table"
    echo
    echo "started $STARTED, ended $(date -u '+%Y-%m-%d %H:%M UTC')"
    machine_lines
    echo "each benchmark's report: $OUT/NAME.md"
    echo
    echo "| benchmark | figure | measured | target | met |"
    echo "|---|---|---|---|---|"
    awk -F'\t' '{ printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5 }' "$SUMMARY"
}
BUSY_BEFORE="n/a (see each report)"
table | tee "$OUT/all.md"
[[ -n "${BENCH_OUT:-}" ]] && cp "$OUT/all.md" "$BENCH_OUT"
exit 0
