#!/usr/bin/env bash
# Set up a fresh machine: the Fashion-MNIST Debian package and a virtual environment with crossformers installed.
# Idempotent: a second run only checks what is there. Usage: bash scripts/setup.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CROSSFORMERS_VENV:-$root/.venv}"

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && \
   [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "[setup] installing Debian package dataset-fashion-mnist"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

if ! command -v g++ >/dev/null 2>&1 && ! command -v c++ >/dev/null 2>&1; then
  echo "[setup] installing g++ (torch.compile's inductor backend compiles C++ on the CPU)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq g++ >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv"
  python3 -m venv "$venv"
fi
# The stamp holds a hash of pyproject.toml: a venv shared by several checkouts (CROSSFORMERS_VENV) is reinstalled only
# when the dependencies change, not because a fresh clone's files are newer. scripts/test.sh imports the checkout's
# own src/ whichever checkout the editable install points at.
stamp="$venv/.crossformers-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing crossformers and its pinned dependencies (torch from local disk, ~2 min)"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$venv/bin/python" -m pip install -q -e "$root[test]"
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $venv"
