"""The package's layers are enforced: ``lint-imports`` (import-linter, contract in pyproject.toml) must pass, and the
contract must really catch an upward import (checked on a throw-away copy of the package)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _lint_imports(src: Path, config: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports not found: pip install -e .[test] (import-linter is in the test extra)")
    env = dict(os.environ, PYTHONPATH=str(src))
    return subprocess.run([exe, "--config", str(config), "--no-cache"], cwd=src.parent, env=env,
                          capture_output=True, text=True, timeout=300)


def test_layers_contract_is_kept():
    res = _lint_imports(SRC, ROOT / "pyproject.toml")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in res.stdout


def test_layers_contract_catches_an_upward_import(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(SRC / "crossformers", src / "crossformers",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bad = src / "crossformers" / "layers" / "_upward.py"
    bad.write_text("from ..analysis import blocks  # noqa: F401\n")  # layers -> analysis: forbidden
    res = _lint_imports(src, tmp_path / "pyproject.toml")
    assert res.returncode != 0
    assert "crossformers.layers is not allowed to import crossformers.analysis" in res.stdout, res.stdout[-4000:]


def test_moved_names_stay_importable_where_the_readme_shows_them():
    import inspect

    import crossformers
    from crossformers import analysis, dense, detection, engine, inference, layers, profiling

    assert crossformers.fuse is inference.fuse
    for name in ("fuse", "optimize_for_inference", "optimize_for_training", "compile_for_inference",
                 "retain_freed_memory", "set_bias_cache", "set_channels_last", "set_onednn_linear"):
        assert getattr(profiling, name) is getattr(inference, name), name
    assert detection.backbone is dense.backbone and detection.pyramid_backbone is dense.pyramid_backbone
    assert analysis.load_model is engine.load_model and analysis.LoadedModel is engine.LoadedModel
    assert inspect.ismodule(layers.attention) and callable(layers.dot_product_attention)
