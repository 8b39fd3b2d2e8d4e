"""Train a detector on a crossformers backbone for a few steps, then detect: on GENERATED images.

The data are synthetic: noisy 128x160 images with 1-3 coloured shapes, rectangles (class 1) and ellipses (class 2),
with their boxes and masks, made on the fly. This shows the API end to end (torchvision's Mask R-CNN / RetinaNet on
our backbone, training step, inference), it is not a benchmark. A few dozen steps on a CPU already lower the losses.
Real training on COCO-format data, with the engine's loop and COCO AP: ``crossformers dense train --task
detection|instance-segmentation`` (docs/dense.md).

    python examples/detection.py                                   # tiny CrossFormer, Mask R-CNN, 20 steps
    python examples/detection.py --backbone fcaformer_l1 --detector retinanet --steps 50
    python examples/detection.py --backbone crossformer_small --full-size --checkpoint crossformer-s.pth
    python examples/detection.py --backbone crossformer_small --full-size --count-macs   # params/GMACs at 1280x800
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from crossformers import detection

# small widths of each family so that the demo runs in seconds on a CPU (--full-size uses the real model)
TINY = {
    "crossformer": dict(embed_dim=32, depths=(1, 2, 2, 1), num_heads=(1, 2, 4, 8)),
    "fcaformer_l0": dict(embed_dim=64, depth=4, num_heads=2),
    "fcaformer": dict(embed_dim=(32, 64, 96, 128), depths=(1, 1, 2, 2), num_heads=(0, 0, 2, 4)),
    "crossvit": dict(embed_dim=(32, 64), num_heads=(2, 2), depth=((1, 2, 0), (1, 2, 0)), mlp_ratio=(2, 2, 1)),
}


def tiny_kwargs(name: str) -> dict:
    """Small-width arguments for the family of ``name`` (see ``TINY``)."""
    for prefix in ("fcaformer_l0", "crossformer", "fcaformer", "crossvit"):
        if name.startswith(prefix):
            return dict(TINY[prefix])
    return {}


def synthetic_sample(h: int = 128, w: int = 160, generator: torch.Generator | None = None):
    """One generated image (3, h, w) in 0..1 and its target: boxes (N, 4) x1 y1 x2 y2, labels (N,), masks (N, h, w).

    Shapes: rectangles (label 1) and ellipses (label 2), 1-3 per image, random colours, on a noisy grey background.
    """
    g = generator
    img = 0.4 + 0.1 * torch.randn(3, h, w, generator=g)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    boxes, labels, masks = [], [], []
    for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
        bh, bw = (int(v) for v in torch.randint(20, 60, (2,), generator=g))
        y0 = int(torch.randint(0, h - bh, (1,), generator=g))
        x0 = int(torch.randint(0, w - bw, (1,), generator=g))
        label = int(torch.randint(1, 3, (1,), generator=g))
        if label == 1:
            mask = (ys >= y0) & (ys < y0 + bh) & (xs >= x0) & (xs < x0 + bw)
        else:
            cy, cx = y0 + bh / 2, x0 + bw / 2
            mask = ((ys - cy + 0.5) / (bh / 2)) ** 2 + ((xs - cx + 0.5) / (bw / 2)) ** 2 <= 1
        colour = torch.rand(3, 1, generator=g)
        img[:, mask] = colour
        nz = mask.nonzero()
        boxes.append([float(nz[:, 1].min()), float(nz[:, 0].min()), float(nz[:, 1].max() + 1),
                      float(nz[:, 0].max() + 1)])
        labels.append(label)
        masks.append(mask.to(torch.uint8))
    target = {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels), "masks": torch.stack(masks)}
    return img.clamp(0, 1), target


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou as iou

    return iou(a, b)


def demo_setup(doc: str, model_flag: str, models: tuple[str, ...], batch_size: int, lr: float,
               macs_at: str) -> tuple[argparse.Namespace, dict]:
    """Parse the arguments of this demo and of examples/segmentation.py, seed torch; returns them and the backbone
    arguments (tiny widths unless --full-size). ``model_flag`` picks the detector / head among ``models`` (the first
    is the default); ``macs_at`` names the size ``--count-macs`` measures at."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--backbone", default="crossformer_tiny", help="model name or our run directory")
    parser.add_argument(model_flag, default=models[0], choices=models)
    parser.add_argument("--checkpoint", help="classification weights for the backbone (head dropped, rest strict)")
    parser.add_argument("--full-size", action="store_true", help="the real backbone widths (default: tiny widths)")
    parser.add_argument("--steps", type=int, default=20, help="training steps (default 20)")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count-macs", action="store_true",
                        help=f"print params and GMACs of the model at {macs_at} (the papers' size) and exit")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    return args, ({} if args.full_size else tiny_kwargs(args.backbone))


def main() -> None:
    args, kwargs = demo_setup(__doc__, "--detector", ("mask_rcnn", "retinanet"), 2, 2e-4, "1280x800")
    build = getattr(detection, args.detector)
    if args.count_macs:
        model = build(args.backbone, num_classes=81 if args.detector == "mask_rcnn" else 80,
                      checkpoint_path=args.checkpoint, backbone_kwargs=kwargs)
        print(json.dumps(detection.detector_complexity(model, (800, 1280)), indent=2))
        return

    # 3 classes: background (0, Mask R-CNN's convention), rectangle (1), ellipse (2); small images: no resize
    light = {}
    if not args.full_size:  # a lighter head too: fewer proposals and sampled RoIs, 64 FPN channels
        light = dict(fpn_channels=64)
        if args.detector == "mask_rcnn":
            light.update(rpn_pre_nms_top_n_train=500, rpn_post_nms_top_n_train=200, rpn_pre_nms_top_n_test=300,
                         rpn_post_nms_top_n_test=100, box_batch_size_per_image=64, box_detections_per_img=20)
    model = build(args.backbone, num_classes=3, checkpoint_path=args.checkpoint, min_size=128, max_size=160,
                  backbone_kwargs=kwargs, **light)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.detector} on {args.backbone} ({'full size' if args.full_size else 'tiny widths'}): "
          f"{n_params:.1f} M parameters; training on generated shapes (not real data)")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = [synthetic_sample(generator=gen) for _ in range(args.batch_size)]
        losses = model([img for img, _ in batch], [t for _, t in batch])
        loss = sum(losses.values())
        if not math.isfinite(float(loss.detach())):
            raise SystemExit(f"non-finite loss at step {step}: {losses}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 1 or step % 5 == 0 or step == args.steps:
            parts = ", ".join(f"{k} {float(v):.3f}" for k, v in losses.items())
            print(f"step {step:3d}  loss {float(loss.detach()):.3f}  ({parts})  {time.perf_counter() - start:.0f} s")

    model.eval()
    img, target = synthetic_sample(generator=torch.Generator().manual_seed(args.seed + 1000))
    with torch.no_grad():
        (pred,) = model([img])
    print(f"inference on a new generated image with {len(target['boxes'])} shape(s):")
    for box, label in zip(target["boxes"], target["labels"], strict=True):
        print(f"  truth      {['', 'rectangle', 'ellipse'][int(label)]:9s} box {[round(float(v)) for v in box]}")
    keep = pred["scores"].argsort(descending=True)[:5]
    ious = box_iou(pred["boxes"][keep], target["boxes"]) if len(keep) else torch.zeros(0, 1)
    for i, k in enumerate(keep):
        label = int(pred["labels"][k])
        extra = f", mask {tuple(pred['masks'][k].shape)}" if "masks" in pred else ""
        print(f"  predicted  {['bg', 'rectangle', 'ellipse'][label]:9s} box {[round(float(v)) for v in pred['boxes'][k]]} "
              f"score {float(pred['scores'][k]):.2f}, best IoU with a true box {float(ious[i].max()):.2f}{extra}")
    if not len(keep):
        print("  no detection above the score threshold yet (train longer: --steps 200)")


if __name__ == "__main__":
    main()
