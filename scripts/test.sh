#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up (Debian data package, venv, pip install) then pytest.
# Usage: bash scripts/test.sh [extra pytest args]   (set CROSSFORMERS_SLOW=1 to include tests marked slow)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
marker=(-m "not slow")
[ "${CROSSFORMERS_SLOW:-0}" = "1" ] && marker=()
exec "$root/.venv/bin/python" -m pytest -q -p no:cacheprovider "${marker[@]}" "$@"
