#!/usr/bin/env bash
# Run timm's own model test suite (tests/test_models.py of the pinned timm) over crossformers' registered names.
# Not part of CI (it takes tens of minutes on 2 cores); see README.md beside this file. Nothing is written to the
# repository: timm's test file is downloaded (PyPI sdist) into a temporary folder.
# Usage: [SELECT='fx'] [DENSE=' '] bash tests/timm_suite/run.sh [extra pytest args]  (SELECT: a pytest -k expression
# narrowing the run; DENSE=' ' keeps the dense backbones, deselected by default: see README.md)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
version="$("$python" -c 'import timm; print(timm.__version__)')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --no-binary :all: "timm==$version" -d "$work"
tar xzf "$work/timm-$version.tar.gz" -C "$work"
cp "$work/timm-$version/tests/test_models.py" "$work/"
# Treat our names as timm treats its own models of the same kind: CrossViT under its cf_ prefix and the plain
# (ViT-like, class token, (B, N, D) features) FcaFormer-L0 are non-standard, like timm's crossvit_* and vit_*;
# TorchScript is not supported (excluded, see docs/models.md).
sed -i "s/'crossvit_\*',/'crossvit_*', 'cf_crossvit_*', 'fcaformer_l0*',/" "$work/test_models.py"
sed -i "s/^EXCLUDE_JIT_FILTERS = \[/EXCLUDE_JIT_FILTERS = ['crossformer*', 'fcaformer*', 'cf_crossvit*', /" \
  "$work/test_models.py"
grep -q "'cf_crossvit_\*', 'fcaformer_l0\*'" "$work/test_models.py"
grep -q "EXCLUDE_JIT_FILTERS = \['crossformer\*'" "$work/test_models.py"
printf 'import crossformers  # noqa: F401  registers our models with timm\n' > "$work/conftest.py"
printf '[pytest]\naddopts = -p no:cacheprovider\nfilterwarnings =\n    ignore::pytest.PytestUnknownMarkWarning\n' \
  > "$work/pytest.ini"
cd "$work"
# test_model_load_pretrained / test_model_features_pretrained download weights from the hub: deselected (offline).
# The authors' dense backbones (*_dense, fcaformer_sh_l2) have no classifier and return a list of maps: they are not
# timm classifiers (tests/detection/test_dense_backbones.py covers them), so they are deselected too.
PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" "$python" -m pytest test_models.py -q -rfEs \
  -k "(crossformer or fcaformer or cf_crossvit) and not pretrained${DENSE:- and not _dense and not sh_l2}${SELECT:+ and ($SELECT)}" "$@"
