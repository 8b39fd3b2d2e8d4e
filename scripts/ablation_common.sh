# Sourced (not run) by the CPU-scale ablation scripts (acl_ablation.sh, fusion_ablation.sh): their common start.
# ablation_start DEFAULT_OUT [EPOCHS] [OUT]: sets `root` (the repository), `epochs` (default 3) and `out` (default
# DEFAULT_OUT), prepares the virtual environment with scripts/setup.sh and changes into the repository.
ablation_start() {
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  bash "$root/scripts/setup.sh" >/dev/null
  cd "$root"
  epochs="${2:-3}"
  out="${3:-$1}"
}
