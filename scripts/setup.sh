#!/usr/bin/env bash
# Sets up everything the project needs on a fresh Debian machine with Python 3.11+:
# the Debian packages (speech synthesis, audio, a headless browser for the tests), a virtual
# environment in .venv, PyTorch (the CPU build 2.13.0 when no torch is there yet; a CUDA build
# already installed is kept) and the project with its test tools. Safe to run again: it only adds
# what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(espeak-ng sox alsa-utils libportaudio2 chromium chromium-driver)
PYTHON=${PYTHON:-python3}
VENV=.venv

log() { printf '[setup] %s\n' "$*" >&2; }

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
fi
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { log "need root (or sudo) to install: ${missing[*]}"; exit 1; }
    SUDO=sudo
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed"'
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
  log "installing torch 2.13.0 (CPU build)"
  "${PIP[@]}" install "torch==2.13.0"
fi

stamp="$VENV/.project-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing the project and its test tools"
  "${PIP[@]}" install -e ".[test]"
  touch "$stamp"
fi
log "ready: $VENV/bin/avatar"
