"""build_transform: grey/RGB in both channel counts, RandAugment, RandomErasing, eval resizing, errors."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image

from crossformers.data import DataError, ToMode, build_transform, denormalize

MEAN1, STD1 = (0.2860,), (0.3530,)
MEAN3, STD3 = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def grey(size=(28, 28)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, size=size, dtype=np.uint8))


def rgb(size=(30, 40)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(*size, 3), dtype=np.uint8))


@pytest.mark.parametrize("chans", [1, 3])
@pytest.mark.parametrize("px", [28, 32])
@pytest.mark.parametrize("auto_augment", [None, "rand-m9-mstd0.5"])
@pytest.mark.parametrize("re_prob", [0.0, 1.0])
@pytest.mark.parametrize("is_training", [True, False])
def test_shapes_for_grey_and_rgb_inputs(chans, px, auto_augment, re_prob, is_training) -> None:
    # mean/std given with 3 values on purpose for 1 channel (averaged) and 1 value for 3 channels (repeated)
    mean, std = (MEAN3, STD3) if chans == 1 else (MEAN1, STD1)
    tf = build_transform(
        is_training, (chans, px, px), mean, std, auto_augment=auto_augment, re_prob=re_prob, scale=(0.6, 1.0)
    )
    random.seed(0)
    torch.manual_seed(0)
    for img in (grey(), rgb(), grey().convert("LA"), rgb().convert("P")):
        for _ in range(8 if is_training else 1):  # several draws so many RandAugment ops are exercised
            out = tf(img)
            assert out.shape == (chans, px, px) and out.dtype == torch.float32
            assert torch.isfinite(out).all()


def test_randaugment_on_grey_needs_mode_conversion() -> None:
    """The timm quirk this module works around: a 3-value fill on an 'L' image fails inside PIL."""
    from timm.data.auto_augment import AugmentOp

    op = AugmentOp("Rotate", prob=1.0, magnitude=9, hparams={"img_mean": (124, 116, 104), "translate_const": 12})
    with pytest.raises(TypeError):
        op(grey())
    tf = build_transform(True, (1, 28, 28), MEAN3, STD3, auto_augment="rand-n6-m9-mstd0.5")
    for _ in range(20):
        assert tf(grey()).shape == (1, 28, 28)


def test_eval_native_size_is_exact_normalisation() -> None:
    tf = build_transform(False, (1, 28, 28), MEAN1, STD1, crop_pct=1.0)
    img = grey()
    out = tf(img)
    expected = (torch.from_numpy(np.array(img)).float() / 255 - MEAN1[0]) / STD1[0]
    assert torch.allclose(out[0], expected, atol=1e-6)
    assert torch.allclose(denormalize(out, MEAN1, STD1)[0], expected * STD1[0] + MEAN1[0])
    # default crop_pct (0.875): resize the short side to 36, center crop 32
    tf32 = build_transform(False, (3, 32, 32), MEAN3, STD3)
    assert [type(t).__name__ for t in tf32.transforms][:3] == ["ToMode", "Resize", "CenterCrop"]
    assert tf32.transforms[1].size == 36 and tf32(rgb((50, 80))).shape == (3, 32, 32)


def test_random_erasing_changes_pixels_on_one_channel() -> None:
    tf_plain = build_transform(True, (1, 28, 28), MEAN1, STD1, hflip=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    tf_re = build_transform(True, (1, 28, 28), MEAN1, STD1, hflip=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), re_prob=1.0)
    img = grey()
    assert not torch.equal(tf_plain(img), tf_re(img))


def test_color_jitter_and_numpy_input_and_pickle() -> None:
    tf = build_transform(True, (1, 32, 32), MEAN1, STD1, color_jitter=0.4, interpolation="random")
    assert tf(np.asarray(grey())).shape == (1, 32, 32)
    tf2 = pickle.loads(pickle.dumps(tf))
    assert tf2(rgb()).shape == (1, 32, 32)
    assert build_transform(False, (3, 28, 28), MEAN3, STD3, interpolation="random")(grey()).shape == (3, 28, 28)


def test_to_mode() -> None:
    assert ToMode("RGB")(grey()).mode == "RGB"
    g = ToMode("L")(grey().convert("RGB"))
    assert g.mode == "L" and np.array_equal(np.asarray(g), np.asarray(grey()))  # grey -> RGB -> L is lossless
    with pytest.raises(DataError, match="expects a PIL image"):
        ToMode("L")(torch.zeros(1, 4, 4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_size": (2, 28, 28)}, "channels 1 or 3"),
        ({"input_size": (28, 28)}, "channels 1 or 3"),
        ({"mean": (0.1, 0.2)}, "mean must hold 1 or 3"),
        ({"std": (0.0,)}, "std must be positive"),
        ({"interpolation": "cubic"}, "Unknown interpolation 'cubic'"),
        ({"re_prob": 1.5}, r"re_prob is a probability"),
        ({"scale": (0.9, 0.5)}, "scale must satisfy"),
        ({"auto_augment": "randaugment-please"}, "auto_augment='randaugment-please'"),
        ({"crop_pct": 0}, "crop_pct must be"),
        ({"color_jitter": (0.1, 0.2)}, "color_jitter must be"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    args = {"is_training": True, "input_size": (1, 28, 28), "mean": MEAN1, "std": STD1, **kwargs}
    with pytest.raises(DataError, match=match):
        build_transform(**args)
