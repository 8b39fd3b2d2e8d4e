"""The training loop: run files, exact resume, NaN handling, fine-tuning."""
from __future__ import annotations

import importlib
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from crossformers.engine import NonFiniteLossError, OutputExistsError, TrainConfig, load_trained, train
from crossformers.engine.config_file import load_config_file

train_module = importlib.import_module("crossformers.engine.train")  # the module (the package exports the function)


def test_run_directory_contents(tiny_config):
    cfg = tiny_config(ema_decay=0.9, epochs=2)
    result = train(cfg, progress=False)
    out = cfg.output
    assert result["epoch"] == 2 and result["step"] == 8 and not result["stopped_early"]
    for key in ("train_loss", "val_loss", "val_top1", "val_top5", "val_top1_ema", "best_val_top1"):
        assert isinstance(result[key], float)
    assert sorted(os.listdir(out)) == ["best", "config.json", "config.yaml", "curves.png", "last", "metrics.csv",
                                       "metrics.jsonl"]
    assert sorted(os.listdir(f"{out}/last")) == ["meta.json", "model.safetensors", "model_ema.safetensors",
                                                 "train_state.pt"]
    assert "train_state.pt" not in os.listdir(f"{out}/best")
    assert TrainConfig.from_json(f"{out}/config.json") == cfg
    assert TrainConfig().replace(**load_config_file(f"{out}/config.yaml")) == cfg
    rows = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert open(f"{out}/metrics.csv").read().splitlines()[0].startswith("epoch,step,lr,train_loss")
    assert open(f"{out}/curves.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    meta = json.loads(open(f"{out}/last/meta.json").read())
    assert meta["model"] == "timm:test_vit" and meta["epoch"] == 2 and meta["step"] == 8
    assert meta["model_kwargs"] == {"num_classes": 10, "in_chans": 1, "img_size": 32}
    assert meta["classes"][0] == "T-shirt/top" and len(meta["classes"]) == 10
    # Fashion-MNIST's own statistics, not the model's
    assert meta["preprocessing"] == {"input_size": [1, 32, 32], "mean": [0.286], "std": [0.353],
                                     "interpolation": "bicubic", "crop_pct": 1.0}
    assert meta["metrics"]["val_top1"] == rows[-1]["val_top1"]
    state = torch.load(f"{out}/last/train_state.pt", weights_only=True)
    assert state["position"] == {"epoch": 2, "batch_in_epoch": 0, "step": 8}
    model, _ = load_trained(out, prefer="last")
    weights = load_file(f"{out}/last/model.safetensors")
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_output_must_be_new_or_empty(tiny_config):
    cfg = tiny_config()
    os.makedirs(cfg.output)
    open(f"{cfg.output}/notes.txt", "w").write("keep me")
    with pytest.raises(OutputExistsError, match="--resume"):
        train(cfg, progress=False)
    assert open(f"{cfg.output}/notes.txt").read() == "keep me"


def _all_tensors_equal(dir_a, dir_b):
    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_file(f"{dir_a}/{name}"), load_file(f"{dir_b}/{name}")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs"
    sa = torch.load(f"{dir_a}/train_state.pt", weights_only=True)["optimizer"]["state"]
    sb = torch.load(f"{dir_b}/train_state.pt", weights_only=True)["optimizer"]["state"]
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), f"optimizer state {i}/{k} differs"


def _rows(out):
    drop = ("epoch_time_s", "train_images_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in open(f"{out}/metrics.jsonl")]


@pytest.mark.parametrize("accum_steps, stop_at", [(1, 3), (1, 6), (2, 4)],
                         ids=["mid-epoch", "epoch-boundary", "accumulation-mid-epoch-2"])
def test_resume_is_bit_identical(tiny_config, accum_steps, stop_at):
    # every source of randomness is on: stochastic depth (torch RNG), RandAugment (python random), RandomErasing and
    # crops (torch), Mixup/CutMix (numpy); the resumed run must restore all of them and the data position
    opts = dict(epochs=2, limit_train=96, batch_size=16, drop_path_rate=0.1, mixup=0.8, cutmix=1.0,
                auto_augment="rand-m9-mstd0.5", re_prob=0.25, ema_decay=0.9, warmup_steps=2,
                accum_steps=accum_steps)
    straight = tiny_config("straight", **opts)
    train(straight, progress=False)

    interrupted = tiny_config("interrupted", max_steps=stop_at, **opts)
    first = train(interrupted, progress=False)
    assert first["step"] == stop_at and first["stopped_early"]
    meta = json.loads(open(f"{interrupted.output}/last/meta.json").read())
    assert meta["step"] == stop_at
    resumed = interrupted.replace(max_steps=None, resume=interrupted.output)
    final = train(resumed, progress=False)
    assert final["step"] == 2 * 6 // accum_steps and not final["stopped_early"]

    _all_tensors_equal(f"{straight.output}/last", f"{interrupted.output}/last")
    assert _rows(straight.output) == _rows(interrupted.output)


def test_nan_loss_stops_and_keeps_last_checkpoint(tiny_config, monkeypatch):
    cfg = tiny_config(epochs=2, max_steps=4)  # 4 steps = one full epoch: checkpoint at the epoch end
    train(cfg, progress=False)
    before = {p: open(f"{cfg.output}/last/{p}", "rb").read() for p in ("model.safetensors", "meta.json",
                                                                        "train_state.pt")}
    calls = {"n": 0}
    real = train_module.compute_loss

    def poisoned(criterion, logits, target):
        calls["n"] += 1
        loss = real(criterion, logits, target)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(train_module, "compute_loss", poisoned)
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg.replace(max_steps=None, resume=cfg.output), progress=False)
    msg = str(err.value)
    assert "loss became NaN at epoch 2 step 6" in msg and "lower --lr or enable --clip-grad" in msg
    assert f"the last good checkpoint is kept at {cfg.output}/last" in msg
    after = {p: open(f"{cfg.output}/last/{p}", "rb").read() for p in before}
    assert after == before


def test_finetune_new_head_with_layer_decay(trained_run, image_folder, tmp_path):
    # a 10-class Fashion-MNIST checkpoint fine-tuned on a 3-class folder: the head is new, the rest is loaded
    cfg = TrainConfig(model="timm:test_vit", data=str(image_folder), pretrained=str(trained_run), in_chans=1,
                      img_size=32, epochs=1, batch_size=8, lr=1e-9, warmup_steps=0, weight_decay=0.0,
                      layer_decay=0.75, max_steps=1, output=str(tmp_path / "ft"), device="cpu")
    train(cfg, progress=False)
    src = load_file(f"{trained_run}/best/model.safetensors")
    new = load_file(f"{tmp_path}/ft/last/model.safetensors")
    assert new["head.weight"].shape == (3, src["head.weight"].shape[1])
    body = [k for k in src if not k.startswith("head.")]
    assert all(torch.allclose(src[k], new[k], atol=1e-6) for k in body)
    meta = json.loads(open(f"{tmp_path}/ft/last/meta.json").read())
    assert meta["classes"] == ["bag", "shirt", "shoe"]
    state = torch.load(f"{tmp_path}/ft/last/train_state.pt", weights_only=True)
    scales = sorted(round(g["lr_scale"], 12) for g in state["optimizer"]["param_groups"])
    # test_vit: stem, 6 blocks and the head are 8 layers scaled 0.75 ** (7 - layer), each with and without weight
    # decay (per-parameter values are checked in test_engine_known_answers.py)
    assert sorted(set(scales)) == sorted(round(0.75 ** k, 12) for k in range(8)) and len(scales) == 16
    # the engine's AdamW runs PyTorch's fused kernel on the CPU, and the choice is saved for the resumed run
    assert all(g["fused"] is True for g in state["optimizer"]["param_groups"])


def test_fused_adamw_only_where_every_parameter_has_a_fused_kernel():
    from crossformers.engine.train import fused_adamw_kwargs

    assert fused_adamw_kwargs(nn.Linear(4, 2)) == {"fused": True}
    assert fused_adamw_kwargs(nn.Linear(4, 2, device="meta")) == {}  # no fused kernel on the meta device
    frozen = nn.Linear(4, 2)
    frozen.requires_grad_(False)
    assert fused_adamw_kwargs(frozen) == {}  # nothing to update
    model = nn.Linear(4, 2)
    torch.optim.AdamW(model.parameters(), **fused_adamw_kwargs(model))  # accepted by PyTorch as given



@pytest.mark.parametrize("train_choice", ["mkl", "onednn"])
def test_training_takes_the_calibrated_training_linear_path(tiny_config, tmp_path, monkeypatch, caplog, train_choice):
    """A recorded calibration decides the linear path of `train` on the CPU by its training-step measurement, even
    where it differs from the choice new models get for inference."""
    from crossformers.layers import linear, linear_calibration

    if not linear.onednn_available():
        pytest.skip("no oneDNN in this build")
    path = tmp_path / "linear_kernel.json"
    monkeypatch.setenv("CROSSFORMERS_LINEAR_CALIBRATION", str(path))
    monkeypatch.delenv("CROSSFORMERS_ONEDNN_LINEAR", raising=False)
    inference = "mkl" if train_choice == "onednn" else "onednn"
    path.write_text(json.dumps({linear_calibration.machine_key(): {str(torch.get_num_threads()): {
        "choice": inference, "inference_choice": "mkl", "train_choice": train_choice}}}))
    cfg = tiny_config(model="crossformer_tiny", max_steps=1, limit_val=16, model_kwargs=dict(
        embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 2), group_size=(2, 2, 2, 1)))
    caplog.set_level("INFO", logger="crossformers")
    train(cfg, progress=False)
    kernel = "onednn" if train_choice == "onednn" else "native"
    assert f"({kernel} linear layers)" in caplog.text


@pytest.mark.parametrize("setting", [None, False, True])
def test_channels_last_follows_the_model_protocol_unless_set(tiny_config, tmp_path, monkeypatch, caplog, setting):
    """channels_last=None: on the CPU, models declaring prefers_channels_last (FcaFormer) train channels-last, others
    not; True / False force it. The saved weights are ordinary contiguous tensors either way."""
    train_module = importlib.import_module("crossformers.engine.train")  # the module, not the function
    seen = {}
    original = train_module.set_channels_last

    def spy(model, enable=True):
        seen["convs"] = model
        return original(model, enable)

    monkeypatch.setattr(train_module, "set_channels_last", spy)
    caplog.set_level("INFO", logger="crossformers")
    cfg = tiny_config(model="fcaformer_nano", max_steps=1, limit_val=16, channels_last=setting)
    train(cfg, progress=False)
    on = setting is not False  # fcaformer_nano prefers channels-last, so None means on
    assert ("channels-last" in caplog.text) is on and ("convs" in seen) is on
    if on:
        convs = [m for m in seen["convs"].modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
        assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    weights = load_file(f"{cfg.output}/last/model.safetensors")
    assert weights and all(t.is_contiguous() for t in weights.values())
    caplog.clear()
    seen.clear()
    train(tiny_config(name="vit", max_steps=1, limit_val=16, channels_last=None), progress=False)
    assert "convs" not in seen and "channels-last" not in caplog.text  # test_vit does not prefer it


def test_channels_last_must_be_a_bool_or_none(tiny_config):
    from crossformers.engine.errors import ConfigError

    with pytest.raises(ConfigError, match="channels_last must be true, false or null"):
        tiny_config(channels_last="yes").validate()
