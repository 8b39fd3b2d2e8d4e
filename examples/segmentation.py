"""Train a semantic segmenter on a crossformers backbone for a few steps, then segment: on GENERATED images.

The data are synthetic: noisy 128x160 images with 1-3 coloured rectangles (class 1) and ellipses (class 2) on
background (class 0), with their label maps, made on the fly (the same generator as examples/detection.py). This shows
the API end to end (segmentation-models-pytorch's Semantic FPN / UPerNet decoders on our backbone, training step,
inference, pixel accuracy and mean IoU); it is not a benchmark. Real training, on ADE20K-layout data, with the
engine's loop and mIoU / mAcc / aAcc: ``crossformers dense train --task semantic-segmentation`` (docs/dense.md).

    python examples/segmentation.py                                    # tiny CrossFormer, UPerNet, 20 steps
    python examples/segmentation.py --backbone crossvit_15_240 --head fpn --steps 50
    python examples/segmentation.py --backbone crossformer_small --full-size --count-macs   # params/GMACs at 512x512
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from crossformers import detection, segmentation

# the generator, the tiny widths and the arguments are shared with examples/detection.py
sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection import demo_setup, synthetic_sample  # noqa: E402


def label_map(target: dict, h: int, w: int) -> torch.Tensor:
    """(h, w) class index per pixel from a detection target (later shapes on top, as drawn)."""
    out = torch.zeros(h, w, dtype=torch.long)
    for mask, label in zip(target["masks"], target["labels"], strict=True):
        out[mask.bool()] = int(label)
    return out


def batch(n: int, generator: torch.Generator, h: int = 128, w: int = 160) -> tuple[torch.Tensor, torch.Tensor]:
    """n generated images (n, 3, h, w) normalised with ImageNet mean/std, and their label maps (n, h, w)."""
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    samples = [synthetic_sample(h, w, generator) for _ in range(n)]
    images = torch.stack([(img - mean) / std for img, _ in samples])
    labels = torch.stack([label_map(t, h, w) for _, t in samples])
    return images, labels


def scores(pred: torch.Tensor, labels: torch.Tensor, classes: int = 3) -> tuple[float, float]:
    """(pixel accuracy, mean IoU over the classes present) in percent."""
    acc = float((pred == labels).float().mean()) * 100
    ious = []
    for c in range(classes):
        union = ((pred == c) | (labels == c)).sum()
        if union:
            ious.append(float(((pred == c) & (labels == c)).sum()) / float(union))
    return acc, 100 * sum(ious) / len(ious)


def main() -> None:
    args, kwargs = demo_setup(__doc__, "--head", ("upernet", "fpn"), 4, 5e-4, "512x512")
    build = getattr(segmentation, args.head)
    if args.count_macs:
        model = build(args.backbone, num_classes=150, checkpoint_path=args.checkpoint, backbone_kwargs=kwargs)
        print(json.dumps(detection.segmenter_complexity(model, (512, 512)), indent=2))
        return

    light = {} if args.full_size else (dict(decoder_channels=64) if args.head == "upernet" else
                                       dict(pyramid_channels=64, segmentation_channels=32))
    model = build(args.backbone, num_classes=3, checkpoint_path=args.checkpoint, backbone_kwargs=kwargs, **light)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.head} on {args.backbone} ({'full size' if args.full_size else 'tiny widths'}): {n_params:.1f} M "
          "parameters; training on generated shapes (not real data)")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        images, labels = batch(args.batch_size, gen)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 1 or step % 5 == 0 or step == args.steps:
            acc, miou = scores(logits.argmax(1), labels)
            print(f"step {step:3d}  loss {float(loss.detach()):.3f}  pixel acc {acc:5.1f}%  mIoU {miou:5.1f}%  "
                  f"{time.perf_counter() - start:.0f} s")

    images, labels = batch(4, torch.Generator().manual_seed(args.seed + 1000))
    pred = model.predict(images).argmax(1)  # eval mode, no gradients
    acc, miou = scores(pred, labels)
    print(f"inference on 4 new generated images: pixel accuracy {acc:.1f}%, mean IoU {miou:.1f}% "
          f"(background is {float((labels == 0).float().mean()) * 100:.0f}% of the pixels)")


if __name__ == "__main__":
    main()
