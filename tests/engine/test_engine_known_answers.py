"""Known answers for the numbers the engine computes: gradients under accumulation, the learning-rate schedule,
gradient clipping, layer-wise lr decay, top-k / per-class accuracy and predicted probabilities.

The training-loop tests swap AdamW for plain SGD (tests/engine/plain_sgd.py): its update is exactly ``-lr * grad``, so
a gradient of the wrong scale changes the weights instead of being normalised away.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from plain_sgd import use_plain_sgd
from safetensors.torch import load_file
from torch import nn

from crossformers.engine import evaluate, load_trained, predict, train
from crossformers.engine.errors import ConfigError
from crossformers.engine.metrics import topk_correct
from crossformers.utils.cpu import cpu_bf16_problem

# no random augmentation: two runs that see the same images in the same order compute the same gradients
DETERMINISTIC = dict(hflip=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), label_smoothing=0.0, weight_decay=0.0)


def _weights(run) -> dict[str, torch.Tensor]:
    return load_file(f"{run}/last/model.safetensors")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_accumulation_of_two_batches_of_8_equals_one_batch_of_16(tiny_config, monkeypatch):
    made = use_plain_sgd(monkeypatch)
    opts = dict(DETERMINISTIC, lr=0.5, limit_train=64)
    whole = train(tiny_config("whole", batch_size=16, **opts), progress=False)
    split = train(tiny_config("split", batch_size=8, accum_steps=2, **opts), progress=False)
    assert whole["step"] == split["step"] == 4
    # same images per step and the mean over 16 either way: the same gradient, hence the same SGD steps
    (_, sgd_whole), (_, sgd_split) = made
    assert sgd_split.grad_norms == pytest.approx(sgd_whole.grad_norms, rel=1e-4)
    w_whole, w_split = _weights(whole["output"]), _weights(split["output"])
    moved = _max_diff(w_whole, _weights_at_init(tiny_config, monkeypatch))
    assert moved > 1e-2  # the steps are large enough for a 2x gradient to show
    assert _max_diff(w_whole, w_split) < 1e-5
    assert split["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-5)


def _weights_at_init(tiny_config, monkeypatch) -> dict[str, torch.Tensor]:
    """The weights a run starts from (same seed): one step at lr ~0 changes nothing measurable."""
    use_plain_sgd(monkeypatch)
    cfg = tiny_config("init", batch_size=16, max_steps=1, lr=1e-30, warmup_lr=1e-30, min_lr=1e-30, **DETERMINISTIC)
    train(cfg, progress=False)
    return _weights(cfg.output)


def test_warmup_then_cosine_learning_rate_at_every_step(tiny_config, monkeypatch):
    made = use_plain_sgd(monkeypatch)
    lr, warmup_lr, min_lr, warmup = 0.1, 0.01, 0.001, 3
    result = train(tiny_config(batch_size=8, epochs=2, lr=lr, warmup_lr=warmup_lr, min_lr=min_lr,
                               warmup_steps=warmup), progress=False)
    total = result["step"]
    assert total == 16  # 64 images / 8 per step, 2 epochs
    expected = []
    for t in range(total):  # the lr the t-th optimizer step used
        if t < warmup:
            expected.append(warmup_lr + (lr - warmup_lr) * t / warmup)
        else:
            expected.append(min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))))
    got = [step[0] for step in made[0][1].lrs]
    assert got == pytest.approx(expected, rel=1e-9)
    assert expected[0] == warmup_lr and expected[warmup] == lr  # the formula's own anchors
    rows = [json.loads(line) for line in open(f"{result['output']}/metrics.jsonl")]
    assert rows[-1]["lr"] == pytest.approx(min_lr)  # the lr after the last step: the end of the cosine


def test_per_epoch_schedule_holds_the_learning_rate_through_each_epoch_and_resumes(tiny_config, monkeypatch):
    """lr_schedule_unit='epoch' (DeiT / CrossViT's lr_scheduler.step(epoch)): one warmup epoch, then a cosine over
    the remaining epochs, each value held for a whole epoch; a run stopped mid-epoch resumes on the same values."""
    made = use_plain_sgd(monkeypatch)
    lr, warmup_lr, min_lr, epochs = 0.1, 0.01, 0.001, 4
    opts = dict(batch_size=16, epochs=epochs, lr=lr, warmup_lr=warmup_lr, min_lr=min_lr, warmup_steps=None,
                warmup_epochs=1, lr_schedule_unit="epoch")
    per_epoch = [warmup_lr] + [min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * e / (epochs - 1)))
                               for e in range(epochs - 1)]
    expected = [v for v in per_epoch for _ in range(4)]  # 64 images / 16 per step
    result = train(tiny_config("whole", **opts), progress=False)
    assert result["step"] == 16
    assert [step[0] for step in made[-1][1].lrs] == pytest.approx(expected, rel=1e-9)
    interrupted = tiny_config("split", max_steps=6, **opts)  # stops inside the second epoch
    train(interrupted, progress=False)
    train(interrupted.replace(max_steps=None, resume=interrupted.output), progress=False)
    assert [step[0] for step in made[-1][1].lrs] == pytest.approx(expected[6:], rel=1e-9)


def test_crop_and_interpolation_options_reach_the_run_preprocessing(tiny_config):
    """--crop-pct / --interpolation replace the model's (and the dataset's) evaluation preprocessing, and the run
    saves them, so that `crossformers eval RUN` uses the same."""
    result = train(tiny_config(crop_pct=0.5, interpolation="bilinear", max_steps=1), progress=False)
    meta = json.loads(open(f"{result['output']}/last/meta.json").read())
    assert meta["preprocessing"]["crop_pct"] == 0.5 and meta["preprocessing"]["interpolation"] == "bilinear"
    with pytest.raises(ConfigError, match="crop_pct must be in"):
        tiny_config(crop_pct=1.5).validate()
    with pytest.raises(ConfigError, match="interpolation must be"):
        tiny_config(interpolation="lanczos").validate()


def test_per_epoch_schedule_takes_its_warmup_in_epochs(tiny_config):
    with pytest.raises(ConfigError, match="give the warmup in epochs"):
        tiny_config(lr_schedule_unit="epoch", warmup_steps=5).validate()
    with pytest.raises(ConfigError, match="'step' or 'epoch'"):
        tiny_config(lr_schedule_unit="batch").validate()
    tiny_config(lr_schedule_unit="epoch", warmup_steps=0).validate()  # no warmup at all is fine


def test_finetune_eval_mode_trains_with_dropout_and_drop_path_off(tiny_config, monkeypatch):
    """finetune_eval_mode (CrossViT's --finetune): the forward passes of training run in eval mode, so two runs with
    drop path that see the same images take the same steps as a run without it; in train mode they differ."""
    use_plain_sgd(monkeypatch)
    opts = dict(DETERMINISTIC, lr=0.5, limit_train=32, drop_path_rate=0.5)
    plain = _weights(train(tiny_config("plain", **dict(opts, drop_path_rate=0.0)), progress=False)["output"])
    frozen = _weights(train(tiny_config("frozen", finetune_eval_mode=True, **opts), progress=False)["output"])
    noisy = _weights(train(tiny_config("noisy", **opts), progress=False)["output"])
    assert _max_diff(frozen, plain) < 1e-6
    assert _max_diff(noisy, plain) > 1e-3


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_gradient_clipping_sets_the_global_norm(tiny_config, monkeypatch, accum_steps):
    made = use_plain_sgd(monkeypatch)
    train(tiny_config("free", batch_size=16 // accum_steps, accum_steps=accum_steps, **DETERMINISTIC),
          progress=False)
    free = made[-1][1].grad_norms
    clip = min(free) / 4  # every step's gradient is larger than this
    train(tiny_config("clipped", batch_size=16 // accum_steps, accum_steps=accum_steps, clip_grad=clip,
                      **DETERMINISTIC), progress=False)
    clipped = made[-1][1].grad_norms
    assert len(clipped) == len(free) == 4
    # clipped once per optimizer step, on the accumulated gradient: the norm is the limit exactly
    assert clipped == pytest.approx([clip] * 4, rel=1e-5)
    # and a limit above the norm leaves the gradient alone
    train(tiny_config("loose", batch_size=16 // accum_steps, accum_steps=accum_steps, clip_grad=10 * max(free),
                      **DETERMINISTIC), progress=False)
    assert made[-1][1].grad_norms == pytest.approx(free, rel=1e-5)


def test_layer_decay_scale_of_every_parameter(tiny_config, monkeypatch):
    made = use_plain_sgd(monkeypatch)
    decay, lr = 0.75, 0.01
    train(tiny_config(layer_decay=decay, lr=lr, max_steps=1, **DETERMINISTIC), progress=False)
    model, sgd = made[0]
    depth = len(model.blocks)
    assert depth == 6
    # timm's layer ids for a ViT (group_matcher): the stem is layer 0, blocks.i is layer i + 1, the final norm joins
    # the last block's layer (its matcher key (99999,) sorts after the blocks and shares their top ordinal) and the
    # head, matched by nothing, is the top layer (scale 1). Scale of layer l: decay ** (top - l).
    top = depth + 1

    def expected_scale(name: str) -> float:
        if name.startswith(("cls_token", "pos_embed", "patch_embed")):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        elif name.startswith("norm."):
            layer = depth
        else:
            assert name.startswith("head."), name
            layer = top
        return decay ** (top - layer)

    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in sgd.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            seen.add(name)
            assert group["lr_scale"] == pytest.approx(expected_scale(name), rel=1e-12), name
    assert seen == set(names.values())
    # the lr each group used at the step is the scheduled lr (lr: no warmup, 1 of 4 steps) times its scale
    by_scale = sorted({round(s, 12) for s in (g["lr_scale"] for g in sgd.param_groups)})
    assert by_scale == sorted(round(decay ** k, 12) for k in range(depth + 2))
    for group_lr, group in zip(sgd.lrs[0], sgd.param_groups, strict=True):
        assert group_lr == pytest.approx(lr * group["lr_scale"], rel=1e-9)


@pytest.mark.skipif(cpu_bf16_problem() is not None, reason="this CPU has no oneDNN bf16 kernels: --amp is refused")
def test_amp_clip_and_accumulation_overfit_a_tiny_set(tiny_config):
    # 16 images seen for 8 epochs with bf16 autocast, clipping and accumulation: the training loss must fall
    result = train(tiny_config(amp=True, clip_grad=1.0, accum_steps=2, batch_size=8, limit_train=16, epochs=8,
                               limit_val=10, lr=3e-3, **DETERMINISTIC), progress=False)
    rows = [json.loads(line) for line in open(f"{result['output']}/metrics.jsonl")]
    losses = [r["train_loss"] for r in rows]
    assert result["step"] == 8 and all(math.isfinite(v) for v in losses)
    assert losses[0] > math.log(10) * 0.8  # starts near chance (10 classes)
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses  # every epoch lower
    assert losses[-1] < 0.7 * losses[0], losses
    assert rows[-1]["train_top1"] > rows[0]["train_top1"]


# ------------------------------------------------------------------------------------------------ metrics


def test_topk_correct_on_constructed_logits():
    logits = torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0, 1.0, -1.0],   # order 1 2 3 4 5 0 6
                           [9.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0],    # order 0 6 5 4 3 2 1
                           [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]])   # order 6 5 4 3 2 1 0
    target = torch.tensor([1, 2, 1])
    # sample 0: top-1 hit; sample 1: label 2 is 6th (top-5 miss); sample 2: label 1 is 6th (miss)
    assert topk_correct(logits, target, (1, 2, 5, 6)) == [1, 1, 1, 3]
    target = torch.tensor([0, 6, 2])  # 6th, 2nd, 5th
    assert topk_correct(logits, target, (1, 2, 5)) == [0, 1, 2]
    assert topk_correct(logits[:, :3], torch.tensor([1, 1, 0]), (1, 2, 5)) == [1, 1, 3]  # k clipped to 3 classes


class _Lookup(nn.Module):
    """A 6-class "model" whose answer is written in the image: a constant grey level 40 * p predicts class p, and the
    ranking continues p+1, p+2, ... (mod 6), so the class ranked last is p-1."""

    num_classes = 6
    in_chans = 1
    pretrained_cfg = dict(architecture="lookup", input_size=(1, 8, 8), mean=(0.0,), std=(1.0,), crop_pct=1.0,
                          interpolation="bilinear")

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.round(x.mean(dim=(1, 2, 3)) * 255 / 40).long()
        j = torch.arange(6)
        return -((j[None] - p[:, None]) % 6).float() + self.dummy


def test_evaluate_top1_top5_per_class_and_confusion_on_known_predictions(tmp_path):
    # (true class, predicted class) of each image
    pairs = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 3), (2, 3), (3, 3), (4, 4), (4, 4), (5, 0)]
    for i, (t, p) in enumerate(pairs):
        d = tmp_path / "val" / f"c{t}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 40 * p, np.uint8), mode="L").save(d / f"{i}.png")
    r = evaluate(_Lookup(), str(tmp_path), batch_size=4, device="cpu")
    assert r["classes"] == [f"c{k}" for k in range(6)] and r["num_images"] == 10
    assert r["top1"] == pytest.approx(60.0)  # 6 of 10 on the diagonal
    # top-5 misses exactly when the label is ranked last (t == p - 1 mod 6): (0,1), (2,3), (5,0)
    assert r["top5"] == pytest.approx(70.0)
    assert r["per_class_accuracy"] == pytest.approx(
        {"c0": 200 / 3, "c1": 50.0, "c2": 0.0, "c3": 100.0, "c4": 100.0, "c5": 0.0})
    cm = np.zeros((6, 6), np.int64)
    for t, p in pairs:
        cm[t, p] += 1
    assert np.array_equal(r["confusion_matrix"], cm)
    logits = -((torch.arange(6)[None] - torch.tensor([p for _, p in pairs])[:, None]) % 6).float()
    assert r["loss"] == pytest.approx(float(F.cross_entropy(logits, torch.tensor([t for t, _ in pairs]))), rel=1e-6)


def test_predict_probabilities_are_the_softmax_of_the_logits(trained_run, image_folder):
    files = sorted((image_folder / "val" / "shirt").glob("*.png"))[:2] + sorted(
        (image_folder / "val" / "bag").glob("*.png"))[:1]
    out = predict(trained_run, files, topk=10, device="cpu")
    model, meta = load_trained(trained_run)
    pre = meta["preprocessing"]
    assert pre["input_size"] == [1, 32, 32] and pre["crop_pct"] == 1.0 and pre["interpolation"] == "bicubic"
    # the checkpoint's eval preprocessing written out by hand: bicubic resize to 32x32, then (x - mean) / std
    x = torch.stack([
        torch.from_numpy(np.asarray(Image.open(f).convert("L").resize((32, 32), Image.BICUBIC), np.float32) / 255)
        for f in files])[:, None]
    x = (x - pre["mean"][0]) / pre["std"][0]
    with torch.no_grad():
        probs = model.eval()(x).softmax(dim=-1)
    for row, got in zip(probs, out, strict=True):
        assert len(got) == 10
        want = sorted(((meta["classes"][j], float(v)) for j, v in enumerate(row)), key=lambda c: -c[1])
        assert [name for name, _ in got] == [name for name, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-5)
        assert sum(v for _, v in got) == pytest.approx(1.0, abs=1e-5)
    top2 = predict(trained_run, files, topk=2, device="cpu")
    assert [p[:2] for p in out] == top2


def test_amp_on_a_cpu_without_bf16_kernels_is_refused_before_anything_is_written(tiny_config, fmnist, monkeypatch):
    """bf16 autocast without oneDNN's bf16 kernels runs through fallback loops (12-43x the fp32 step on an AVX2 CPU):
    training and evaluation refuse it with the fix, and training leaves no output folder behind."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    cfg = tiny_config("amp", amp=True)
    with pytest.raises(ConfigError, match=r"--amp \(bf16 autocast\): this CPU .* no bf16 support.*--no-amp"):
        train(cfg, progress=False)
    assert not Path(cfg.output).exists()
    with pytest.raises(ConfigError, match="--no-amp"):
        evaluate(nn.Linear(4, 10), fmnist, limit=4, device="cpu", amp=True)
