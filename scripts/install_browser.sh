#!/usr/bin/env bash
# Install what the dashboard's browser test needs: Debian's chromium + chromedriver and the
# selenium Python bindings. Idempotent: when everything is present it only checks and exits
# (well under a second), so the test set-up can call it every time.
#
# Usage: bash scripts/install_browser.sh [VENV]   (VENV defaults to .venv beside this script's
# project root; set QKSCORE_SKIP_BROWSER_INSTALL=1 to skip entirely).
set -euo pipefail

if [[ "${QKSCORE_SKIP_BROWSER_INSTALL:-0}" == "1" ]]; then
  echo "install_browser: skipped (QKSCORE_SKIP_BROWSER_INSTALL=1)"
  exit 0
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
PY="$VENV/bin/python"

have_browser() {
  { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } &&
    command -v chromedriver >/dev/null 2>&1
}

if ! have_browser; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: chromium/chromedriver missing and no apt-get here; the browser" \
      "test will be skipped" >&2
  else
    SUDO=""
    if [[ "$(id -u)" != "0" ]]; then
      if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install_browser: not root and no sudo: cannot install chromium" >&2
        SUDO="unavailable"
      fi
    fi
    if [[ "$SUDO" != "unavailable" ]]; then
      echo "install_browser: installing chromium and chromium-driver (apt-get)"
      export DEBIAN_FRONTEND=noninteractive
      # A failed install is reported, not fatal: the browser test then skips with the reason.
      if ! { $SUDO apt-get update -qq &&
        $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver \
          >/dev/null; }; then
        echo "install_browser: WARNING: apt-get could not install chromium" >&2
      fi
    fi
  fi
fi

if [[ -x "$PY" ]]; then
  if ! "$PY" -c "import selenium" >/dev/null 2>&1; then
    echo "install_browser: installing selenium into $VENV"
    "$PY" -m pip install -q selenium ||
      echo "install_browser: WARNING: pip could not install selenium" >&2
  fi
else
  echo "install_browser: no Python at $PY; skipping selenium" >&2
fi

if have_browser; then
  echo "install_browser: ok ($(command -v chromium || command -v chromium-browser)," \
    "$(command -v chromedriver))"
else
  echo "install_browser: WARNING: no chromium/chromedriver; the browser test will be skipped" >&2
fi
