#!/usr/bin/env bash
# walletgate developer entry point. Works on a fresh Debian machine with Python 3.11 and Rust:
#   ./dev.sh start   install what is missing, build, start a local Redis + the gateway (demo)
#   ./dev.sh test    install what is missing, build, run every test (cargo test + pytest)
#   ./dev.sh lint    ruff, mypy, stubtest of _native.pyi, cargo fmt --check, cargo clippy -D warnings
#   ./dev.sh setup   only the install and build steps
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY="$VENV/bin/python"

need_apt() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  command -v wrk >/dev/null || missing+=(wrk)
  if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
      echo "missing: ${missing[*]} (install them with apt-get as root)" >&2
      exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

setup() {
  need_apt
  if [[ ! -x "$PY" ]]; then
    python3 -m venv "$VENV"
  fi
  "$PY" -m pip install -q --upgrade pip
  # An editable install: maturin builds the release extension into python/walletgate/.
  "$PY" -m pip install -q -e '.[dev]'
}

lint() {
  "$VENV/bin/ruff" check python tests bench
  "$VENV/bin/ruff" format --check python tests bench
  "$VENV/bin/mypy"
  # The stub is the native module's documentation: check it against the built binary.
  "$PY" -m mypy.stubtest walletgate._native
  cargo fmt --check
  cargo clippy --all-targets --no-default-features -- -D warnings
  cargo clippy --all-targets -- -D warnings
}

run_tests() {
  cargo test --no-default-features --quiet
  "$PY" -m pytest -q -p no:cacheprovider "$@"
}

case "${1:-}" in
  setup) setup ;;
  lint) setup; lint ;;
  test) shift; setup; run_tests "$@" ;;
  start) shift; setup; exec "$VENV/bin/walletgate" demo "$@" ;;
  *) echo "usage: ./dev.sh start|test|lint|setup" >&2; exit 2 ;;
esac
