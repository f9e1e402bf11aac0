#!/usr/bin/env bash
# Installs what the end-to-end tests need, on a Debian 12 machine (as root)
# that already has Rust, Python 3.11 and Node 20. Safe to run again: every step
# checks first and does nothing when its result is already there.
#
#   - Chromium from Debian (/usr/bin/chromium) for sora-js-sdk
#   - .venv/ with sora-sdk and numpy (and websockets, for the fake server)
#   - tests/clients/js/node_modules from the committed package-lock.json
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
JS_DIR="$ROOT/tests/clients/js"
PY_REQS="$ROOT/tests/clients/py/requirements.txt"

log() { printf '[install-test-deps] %s\n' "$*" >&2; }

export DEBIAN_FRONTEND=noninteractive

# --- Chromium -----------------------------------------------------------------
if [[ ! -x /usr/bin/chromium ]]; then
    log "installing chromium"
    apt-get update </dev/null
    apt-get install -y --no-install-recommends chromium </dev/null
else
    log "chromium present: /usr/bin/chromium"
fi

# --- Python venv --------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv at $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# A stamp of the requirements file decides whether pip has anything to do.
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$PY_REQS" | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
    log "pip install -r $PY_REQS"
    "$VENV/bin/python" -m pip install --quiet -r "$PY_REQS" </dev/null
    echo "$WANT" >"$STAMP"
else
    log "venv up to date"
fi
"$VENV/bin/python" -c 'import sora_sdk, numpy' \
    || { log "sora_sdk or numpy does not import from $VENV"; exit 1; }

# --- Node modules ---------------------------------------------------------------
JS_STAMP="$JS_DIR/node_modules/.lock.sha256"
JS_WANT="$(sha256sum "$JS_DIR/package-lock.json" | cut -d' ' -f1)"
if [[ ! -f "$JS_STAMP" || "$(cat "$JS_STAMP")" != "$JS_WANT" ]]; then
    log "npm ci in $JS_DIR"
    # Playwright must never download a browser of its own: Debian's is used.
    (cd "$JS_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund </dev/null)
    echo "$JS_WANT" >"$JS_STAMP"
else
    log "node_modules up to date"
fi
test -f "$JS_DIR/node_modules/sora-js-sdk/package.json" \
    || { log "sora-js-sdk missing from $JS_DIR/node_modules"; exit 1; }

log "done"
