#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up (Debian data package, venv, pip install) then pytest.
# Usage: bash scripts/test.sh [extra pytest args]   (set CROSSFORMERS_SLOW=1 to include tests marked slow;
# CROSSFORMERS_VENV=DIR reuses an existing virtual environment instead of ./.venv)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CROSSFORMERS_VENV:-$root/.venv}"
CROSSFORMERS_VENV="$venv" bash "$root/scripts/setup.sh"
cd "$root"
marker=(-m "not slow")
[ "${CROSSFORMERS_SLOW:-0}" = "1" ] && marker=()
# This checkout's own sources come first, also for the subprocesses the tests start (a shared venv's editable
# install may point at another checkout).
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
# --durations: the slowest tests are listed at the end, to keep the suite within its time budget (~15 min, 2 cores)
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider --durations=15 "${marker[@]}" "$@"
