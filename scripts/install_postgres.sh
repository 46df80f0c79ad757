#!/usr/bin/env bash
# Install what the PostgreSQL audit-store tests need: Debian's postgresql server binaries
# (initdb, pg_ctl) and the psycopg 3 + psycopg-pool Python packages. Idempotent: when
# everything is present it only checks and exits (well under a second), so the test set-up can
# call it every time. The tests start their own server (initdb into a temporary folder, a Unix
# socket only, no TCP listener) and stop it at the end of the session.
#
# Usage: bash scripts/install_postgres.sh [VENV]   (VENV defaults to .venv beside this script's
# project root; set QKSCORE_SKIP_POSTGRES_INSTALL=1 to skip entirely).
set -euo pipefail

if [[ "${QKSCORE_SKIP_POSTGRES_INSTALL:-0}" == "1" ]]; then
  echo "install_postgres: skipped (QKSCORE_SKIP_POSTGRES_INSTALL=1)"
  exit 0
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
PY="$VENV/bin/python"

pg_bindir() {
  # Debian keeps initdb and pg_ctl out of PATH, under /usr/lib/postgresql/<version>/bin
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
    return 0
  fi
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then echo "$d"; return 0; fi
  done
  return 1
}

if ! pg_bindir >/dev/null; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_postgres: postgresql missing and no apt-get here; the PostgreSQL tests" \
      "will be skipped" >&2
  else
    SUDO=""
    if [[ "$(id -u)" != "0" ]]; then
      if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install_postgres: not root and no sudo: cannot install postgresql" >&2
        SUDO="unavailable"
      fi
    fi
    if [[ "$SUDO" != "unavailable" ]]; then
      echo "install_postgres: installing postgresql (apt-get)"
      export DEBIAN_FRONTEND=noninteractive
      # A failed install is reported, not fatal: the PostgreSQL tests then skip with the reason.
      if ! { $SUDO apt-get update -qq &&
        $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }; then
        echo "install_postgres: WARNING: apt-get could not install postgresql" >&2
      fi
    fi
  fi
fi

if [[ -x "$PY" ]]; then
  if ! "$PY" -c "import psycopg, psycopg_pool" >/dev/null 2>&1; then
    echo "install_postgres: installing psycopg into $VENV"
    "$PY" -m pip install -q "psycopg[binary]>=3.1" "psycopg-pool>=3.2" ||
      echo "install_postgres: WARNING: pip could not install psycopg" >&2
  fi
else
  echo "install_postgres: no Python at $PY; skipping psycopg" >&2
fi

if BIN="$(pg_bindir)"; then
  echo "install_postgres: ok ($BIN)"
else
  echo "install_postgres: WARNING: no initdb/pg_ctl; the PostgreSQL tests will be skipped" >&2
fi
