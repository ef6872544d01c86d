#!/usr/bin/env bash
# Installs everything the test suite needs, then runs it: `bash scripts/test.sh [pytest args]`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then  # the browser test drives Debian's chromium
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium not found and cannot apt-get install it; the browser test will be skipped" >&2
  fi
fi
python -m pip install -q -r requirements-dev.txt
python -m ruff check .  # lint (pyproject.toml [tool.ruff]): a failing check fails the run
python -m pytest -q "$@"
