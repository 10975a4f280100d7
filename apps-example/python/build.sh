#!/usr/bin/env bash
# Builds greeter-py, the Python example app, into OUT_DIR/greeter-py.wasm.
#
#   apps-example/python/build.sh OUT_DIR [SRC_DIR WORLD NAME]
#
# With the optional arguments it builds another app with the same toolchain:
# the module `app` in SRC_DIR, for WORLD (of wit/), into OUT_DIR/NAME.wasm
# (bench/heavy.sh builds its proxy-world hello this way).
#
# The toolchain (requirements.txt) goes into a venv at
# <repo>/target/polyglot/venv; it is installed only when missing or when
# requirements.txt changed, so a re-run needs no network.
set -euo pipefail

if [[ $# -ne 1 && $# -ne 4 ]]; then
    echo "usage: $0 OUT_DIR [SRC_DIR WORLD NAME]" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/target/polyglot/venv"
src="${2:-$here/src}"
world="${3:-steelmesh:app/app}"
name="${4:-greeter-py}"
stamp="$venv/.greeter-py-requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"

if [[ ! -x "$venv/bin/componentize-py" || "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    echo "$name: installing toolchain into $venv" >&2
    python3 -m venv "$venv"
    nice "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" >"$stamp"
fi

mkdir -p "$1"
out="$(cd "$1" && pwd)"
tmp="$out/.$name.wasm.tmp"
# componentize-py runs the app once at build time with its python path
# writable (CPython leaves __pycache__ there), so build from a copy of src/.
stage="$(mktemp -d)"
trap 'rm -rf "$stage"; rm -f "$tmp"' EXIT
cp -R "$src/." "$stage/"

# Not in an activated venv: with VIRTUAL_ENV set, componentize-py would bundle
# that venv's site-packages into the component.
nice env -u VIRTUAL_ENV "$venv/bin/componentize-py" --quiet \
    -d "$repo/wit" -w "$world" \
    componentize -p "$stage" app -o "$tmp"
"$venv/bin/wasm-tools" validate "$tmp"
# A rename, so that a meshd watching OUT_DIR never sees a half-written file.
mv -f "$tmp" "$out/$name.wasm"
echo "$name: wrote $out/$name.wasm" >&2
