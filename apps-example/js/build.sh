#!/usr/bin/env bash
# Builds greeter-js, the JavaScript example app, into OUT_DIR/greeter-js.wasm.
#
#   apps-example/js/build.sh OUT_DIR
#
# The toolchain (package.json, pinned by package-lock.json) is installed with
# `npm ci` into node_modules/ here (gitignored), only when missing or when
# package-lock.json changed, so a re-run needs no network.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
stamp="$here/node_modules/.greeter-js-lock.sha256"
want="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"

if [[ ! -x "$here/node_modules/.bin/componentize-js" || "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    echo "greeter-js: installing toolchain with npm ci" >&2
    (cd "$here" && nice npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$stamp"
fi

mkdir -p "$1"
out="$(cd "$1" && pwd)"
tmp="$out/.greeter-js.wasm.tmp"
trap 'rm -f "$tmp"' EXIT

# Targets the project's world as it is; see src/app.js for why the module
# exports `incomingHandler` instead of using a fetch event listener.
nice "$here/node_modules/.bin/componentize-js" \
    --wit "$repo/wit" --world-name steelmesh:app/app \
    --out "$tmp" "$here/src/app.js"
# A rename, so that a meshd watching OUT_DIR never sees a half-written file.
mv -f "$tmp" "$out/greeter-js.wasm"
echo "greeter-js: wrote $out/greeter-js.wasm" >&2
