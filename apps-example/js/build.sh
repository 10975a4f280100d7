#!/usr/bin/env bash
# Builds greeter-js, the JavaScript example app, into OUT_DIR/greeter-js.wasm.
#
#   apps-example/js/build.sh OUT_DIR [SRC_FILE WORLD NAME]
#
# With the optional arguments it builds another app with the same toolchain:
# SRC_FILE, for WORLD (of wit/), into OUT_DIR/NAME.wasm (bench/heavy.sh builds
# its proxy-world hello this way).
#
# The toolchain (package.json, pinned by package-lock.json) is installed with
# `npm ci` into node_modules/ here (gitignored), only when missing or when
# package-lock.json changed, so a re-run needs no network.
set -euo pipefail

if [[ $# -ne 1 && $# -ne 4 ]]; then
    echo "usage: $0 OUT_DIR [SRC_FILE WORLD NAME]" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
src="${2:-$here/src/app.js}"
world="${3:-steelmesh:app/app}"
name="${4:-greeter-js}"
stamp="$here/node_modules/.greeter-js-lock.sha256"
want="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"

if [[ ! -x "$here/node_modules/.bin/componentize-js" || "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    echo "$name: installing toolchain with npm ci" >&2
    (cd "$here" && nice npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$stamp"
fi

mkdir -p "$1"
out="$(cd "$1" && pwd)"
tmp="$out/.$name.wasm.tmp"
trap 'rm -f "$tmp"' EXIT

# Targets the project's world as it is; see src/app.js for why the module
# exports `incomingHandler` instead of using a fetch event listener.
nice "$here/node_modules/.bin/componentize-js" \
    --wit "$repo/wit" --world-name "$world" \
    --out "$tmp" "$src"
# A rename, so that a meshd watching OUT_DIR never sees a half-written file.
mv -f "$tmp" "$out/$name.wasm"
echo "$name: wrote $out/$name.wasm" >&2
