#!/usr/bin/env bash
# Set up s2s: system packages (ffmpeg, espeak-ng, flite, chromium, postgresql) and a virtualenv in .venv.
# Idempotent: a second run only checks. PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v flite >/dev/null || need+=(flite)
# The demo's browser test (tests/test_demo.py) drives Debian's chromium through Playwright.
command -v chromium >/dev/null || need+=(chromium)
# resemblyzer's VAD (webrtcvad) has no wheel: pip compiles it, which needs a C compiler and Python's headers.
command -v gcc >/dev/null || need+=(gcc)
# The shared-store test (tests/test_shared_stores.py, `make test-stores`) starts a throwaway PostgreSQL
# cluster; Debian keeps initdb off PATH, in /usr/lib/postgresql/<version>/bin.
command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
PY=${PYTHON:-python3}
[ -f "$("$PY" -c 'import sysconfig; print(sysconfig.get_path("include"))')/Python.h" ] || need+=(python3-dev)
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing system packages: ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then
    echo "installing system packages with sudo: ${need[*]}"
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "error: missing system packages: ${need[*]}." >&2
    echo "Install them with your package manager (Debian/Ubuntu: apt-get install ${need[*]};" >&2
    echo "macOS: brew install ffmpeg espeak-ng flite postgresql), then run this again." >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last successful install.
stamp=.venv/.s2s-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
