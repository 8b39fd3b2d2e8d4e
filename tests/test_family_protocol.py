"""The family protocol (crossformers.models.protocol): a fourth family defined in one test file (tests/toy_family.py)
runs through analysis, ONNX export with verification, profiling and the dense backbones with no change to the
library; and no package outside models/ and layers/ names a family class."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import crossformers
import toy_family  # noqa: F401 (registers toy_tiny / toy_small)
from crossformers import cli
from crossformers.analysis import capture_attention, mean_attention_distance, model_blocks
from crossformers.checkpoint import guess_family
from crossformers.detection import backbone, pyramid_backbone
from crossformers.export import OnnxClassifier, dynamic_size_rule, export_model
from crossformers.inference import fuse, optimize_for_inference
from crossformers.profiling import profile_model

SRC = Path(crossformers.__file__).parent


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_toy_family_is_a_registered_model():
    assert "toy_tiny" in crossformers.list_models("toy*")
    model = crossformers.create_model("toy_tiny").eval()
    assert model(torch.randn(2, 3, 64, 96)).shape == (2, 10)
    assert guess_family({"a.toy_marker": torch.zeros(1)}) == "Toy (crossformers layout)"


def test_analysis_cli_on_the_toy_family(image, tmp_path, capsys):
    for cmd in ("attention", "distance", "amplitude"):
        code = cli.main(["analyze", cmd, "toy_tiny", "--images", image, "--output", str(tmp_path / cmd)])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert (tmp_path / cmd / f"{cmd}.png").is_file()
    maps = json.loads((tmp_path / "attention" / "attention.json").read_text())["maps"]
    assert maps and all(m["meta"]["caption"] == "global" for m in maps)
    blocks = json.loads((tmp_path / "distance" / "distance.json").read_text())["models"][0]["blocks"]
    assert [b["meta"]["stride_px"] for b in blocks] == [[4.0, 4.0], [8.0, 8.0], [16.0, 16.0], [32.0, 32.0]]


def test_attention_of_the_toy_family_lands_on_its_pixels():
    """Zeroed qkv weights give uniform attention: the mean distance is the mean pairwise distance of the map's
    token centres, which the protocol's lattice places at 4-pixel strides (stage 0)."""
    model = crossformers.create_model("toy_tiny").eval()
    with torch.no_grad():
        for blk in model_blocks(model):
            blk.module.attn.qkv.weight.zero_()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), capture_attention(model, blocks=["stages.0.blocks.0"]) as cap:
        model(x)
    (rec,) = cap.records
    assert rec.probs.shape == (1, 1, 2, 64, 64)
    torch.testing.assert_close(rec.probs, torch.full_like(rec.probs, 1 / 64))
    centres = rec.query_positions()[0]
    assert centres[0].tolist() == [2.0, 2.0] and centres[9].tolist() == [6.0, 6.0]
    d = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1)).mean()
    (entry,) = mean_attention_distance(model, x, blocks=["stages.0.blocks.0"])
    assert entry["mean_distance_px"] == pytest.approx(d, rel=1e-5)


def test_onnx_export_of_the_toy_family(tmp_path):
    model = crossformers.create_model("toy_tiny").eval()
    report = export_model(model, output=tmp_path / "toy.onnx", dynamic=True)
    assert report.verified and report.dynamic_hw
    assert report.size_rule["period"] == list(dynamic_size_rule(model).period) == [32, 32]
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(OnnxClassifier(tmp_path / "toy.onnx")(x)), model(x),
                                   atol=1e-4, rtol=1e-4)


def test_profile_and_inference_transforms_of_the_toy_family():
    result = profile_model("toy_tiny", img_size=64, batch_size=2, warmup=1, repeats=2, throughput_repeats=1,
                           memory=False, matmul_peak=False)
    model = crossformers.create_model("toy_tiny")
    assert result.params == sum(p.numel() for p in model.parameters())
    assert result.macs > 0
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model.eval()(x)
        torch.testing.assert_close(fuse(model, inplace=False)(x), ref)
        torch.testing.assert_close(optimize_for_inference(model, inplace=False)(x), ref, atol=1e-5, rtol=1e-5)


def test_dense_backbones_of_the_toy_family():
    feats = backbone("toy_tiny").eval()
    with torch.no_grad():
        maps = feats(torch.randn(1, 3, 64, 96))
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 16, 24), (32, 8, 12), (64, 4, 6), (128, 2, 3)]
    pyramid = pyramid_backbone("toy_tiny").eval()
    with torch.no_grad():
        maps = pyramid(torch.randn(1, 3, 64, 64))
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]


def _family_classes() -> set[str]:
    names = set()
    for f in (SRC / "models").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ClassDef) and f.stem in ("crossformer", "crossvit", "fcaformer"):
                names.add(node.name)
    return names


def test_no_package_outside_models_and_layers_names_a_family_class():
    family = _family_classes()
    assert {"CrossFormer", "CrossViT", "FcaFormer", "FcaBlock"} <= family
    offenders = []
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC)
        if rel.parts[0] in ("models", "layers"):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[-1] in (
                    "crossformer", "crossvit", "fcaformer") and "models" in node.module:
                offenders.append(f"{rel}: imports {node.module}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                used = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)} if len(node.args) > 1 else set()
                offenders += [f"{rel}:{node.lineno}: isinstance(..., {n})" for n in used & family]
    assert not offenders, offenders
