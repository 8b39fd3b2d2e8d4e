"""Parameters and MACs of detectors and segmenters on crossformers backbones, as a markdown table.

Detection (torchvision RetinaNet and Mask R-CNN with FPN) at 1280x800, segmentation (smp Semantic FPN and UPerNet) at
512x512 (``--det-size`` / ``--seg-size`` to change), the input sizes of the papers' tables; MACs from ``torch.utils.flop_counter`` on the explicit attention path
(see :mod:`crossformers.detection.complexity`). Slow on a CPU (about a minute per model and task):

    python examples/complexity.py --backbones crossformer_tiny crossformer_small --out table.md
"""
from __future__ import annotations

import argparse
import time

import torch

from crossformers import detection, segmentation

TASKS = {
    "retinanet": (lambda b: detection.retinanet(b, num_classes=80), detection.detector_complexity, "det"),
    "mask_rcnn": (lambda b: detection.mask_rcnn(b, num_classes=81), detection.detector_complexity, "det"),
    "fpn": (lambda b: segmentation.fpn(b, num_classes=150), detection.segmenter_complexity, "seg"),
    "upernet": (lambda b: segmentation.upernet(b, num_classes=150), detection.segmenter_complexity, "seg"),
}
DEFAULT_BACKBONES = ["crossformer_tiny", "crossformer_small", "crossformer_base", "crossformer_pp_small",
                     "crossformer_pp_base", "fcaformer_l1", "fcaformer_l2", "crossvit_15_240"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=DEFAULT_BACKBONES, help="model names")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--det-size", nargs=2, type=int, default=(800, 1280), metavar=("H", "W"),
                        help="detection input (default 800 1280, the papers' 1280x800)")
    parser.add_argument("--seg-size", nargs=2, type=int, default=(512, 512), metavar=("H", "W"),
                        help="segmentation input (default 512 512; the papers' UPerNet FLOPs are at 512 2048)")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = ["| backbone | task | input (H x W) | params (M) | GMACs | backbone params (M) | backbone GMACs |",
            "|---|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    for name in args.backbones:
        for task in args.tasks:
            build, count, kind = TASKS[task]
            size = tuple(args.det_size if kind == "det" else args.seg_size)
            start = time.perf_counter()
            result = count(build(name), size)
            row = (f"| `{name}` | {task} | {size[0]} x {size[1]} | {result['params_m']:.1f} | {result['gmacs']:.1f} | "
                   f"{result['backbone_params_m']:.1f} | {result['backbone_gmacs']:.1f} |")
            rows.append(row)
            print(row, f"<!-- {time.perf_counter() - start:.0f} s -->", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
