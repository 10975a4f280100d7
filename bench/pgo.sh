#!/usr/bin/env bash
# A profile-guided (PGO) build of meshd: build it instrumented, run it on
# the example apps under load, merge the profile it wrote, and build it again
# with that profile, so that the compiler lays out and inlines the request
# path as it was used.
#
#   bash bench/pgo.sh
#   MESHD=target/pgo/target-use/release-lto/meshd bash bench/instructions.sh
#   MESHD_PROFILE=pgo bash bench/instructions.sh      # the same
#
# The training load, each for TRAIN_SECONDS (default 8) on loopback:
# hello with a fresh instance per request and with `reuse = 1000` (wrk over
# HTTP/1.1, then h2load over h2c), and echo with a 1 KiB POST body.
#
# Both builds use the release-lto profile (fat LTO, one codegen unit): with
# the profile it spent 15-20% less CPU per request than the profile-guided
# `release` build (docs/benchmarks.md). They use target directories of
# their own (target/pgo/target-gen and target-use): their RUSTFLAGS differ
# from the workspace's, so sharing target/ would rebuild everything there
# too. Each is a cold build of the workspace: 55 and 40 minutes on this
# 2-core machine with another build running beside them (PGO_PROFILE=release:
# about 24 minutes each). The profile's file is named by its digest, so the
# second is redone exactly when the profile changed (cargo does not watch
# the file). Needs the
# llvm-profdata of rustc's own LLVM: `rustup component add llvm-tools`,
# which this script runs if rustup is there.
#
# Environment (all optional):
#   TRAIN_SECONDS  how long each training load runs          (default 8)
#   PGO_PROFILE    the cargo profile of both builds           (default release-lto)
#   PGO_DIR        where the builds and profiles go           (default target/pgo)
set -euo pipefail
BENCH_NAME=pgo
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TRAIN_SECONDS="${TRAIN_SECONDS:-8}"
PROFILE="${PGO_PROFILE:-release-lto}"
PGO="${PGO_DIR:-$REPO/target/pgo}"
PROFILES="$PGO/raw"

need_tools
command -v h2load >/dev/null || apt_install nghttp2-client
need_guests hello echo

# llvm-profdata must read the format rustc's LLVM writes: the toolchain's own.
if command -v rustup >/dev/null; then
    rustup component add llvm-tools >&2
fi
PROFDATA="$(find "$(rustc --print sysroot)/lib/rustlib" -name llvm-profdata -type f | head -n1)"
[[ -x "$PROFDATA" ]] || die "no llvm-profdata in the toolchain: rustup component add llvm-tools"

build() { # TARGET_DIR RUSTFLAGS
    log "building meshd ($PROFILE) into $1 with RUSTFLAGS=$2"
    (cd "$REPO" && RUSTFLAGS="$2" nice -n 10 cargo build --profile "$PROFILE" -p meshd --target-dir "$1")
}

rm -rf "$PROFILES"
build "$PGO/target-gen" "-Cprofile-generate=$PROFILES"
MESHD="$PGO/target-gen/$PROFILE/meshd"

mkdir -p "$WORK/fresh" "$WORK/reuse" "$WORK/echo"
cp "$GUESTS/hello.wasm" "$WORK/fresh/hello.wasm"
cp "$GUESTS/hello.wasm" "$WORK/reuse/hello.wasm"
echo 'reuse = 1000' >"$WORK/reuse/hello.toml"
cp "$GUESTS/echo.wasm" "$WORK/echo/echo.wasm"
head -c 1024 /dev/zero | tr '\0' 'x' >"$WORK/body"

# train APPS PATH: load on one meshd, then a graceful stop (the profile is
# written when the process exits).
train() {
    start_meshd "$WORK/train.log" --apps "$WORK/$1" --cache-dir "$WORK/cache" \
        --data-dir "$WORK/data-$1" --no-watch
    local url="http://$MESHD_ADDR$2"
    if [[ "$1" == echo ]]; then
        h2load --h1 -c 8 -D "$TRAIN_SECONDS" -d "$WORK/body" "$url" | grep '^requests:' >&2
    else
        wrk -t1 -c32 -d"${TRAIN_SECONDS}s" "$url" | grep 'Requests/sec' >&2
        h2load -c 8 -m 10 -D "$TRAIN_SECONDS" "$url" | grep '^requests:' >&2
    fi
    stop_meshd
}
log "training on hello (fresh, reuse) and echo, ${TRAIN_SECONDS} s each"
train fresh /hello/
train reuse /hello/
train echo /echo/

"$PROFDATA" merge -o "$WORK/merged.profdata" "$PROFILES"
profile="$PGO/meshd-$(sha256sum "$WORK/merged.profdata" | cut -c1-16).profdata"
cp "$WORK/merged.profdata" "$profile"
build "$PGO/target-use" "-Cprofile-use=$profile -Cllvm-args=-pgo-warn-missing-function=false"
log "done: $PGO/target-use/$PROFILE/meshd (profile $profile)"
