"""``crossformers export``: a classifier to ONNX or torch.export, verified against PyTorch.

Examples::

    crossformers export crossvit_15_240 --dynamic --output crossvit15.onnx
    crossformers export crossformer_small --checkpoint crossformer-s.pth --img-size 448 --dynamic
    crossformers export runs/nano --format torch.export --output nano.pt2
"""
from __future__ import annotations

import argparse
import json

from crossformers.cli_types import json_object, positive_int

from .core import ExportError, export_model

__all__ = ["add_subcommands"]


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``export`` subcommand on the ``crossformers`` command's subparsers."""
    p = subparsers.add_parser(
        "export", help="export a model to ONNX or torch.export and verify it",
        description=(
            "Export a classifier (model name, or one of our run/checkpoint directories) to ONNX or torch.export "
            "(.pt2) and check the file against PyTorch (onnxruntime for ONNX, within --atol, at two input sizes when "
            "anything is dynamic; sizes the file cannot serve are checked to be refused). --dynamic makes the batch "
            "dynamic and, where the model allows, height/width: any size for CrossViT, multiples of 224 from 448 for "
            "CrossFormer (448 for CrossFormer++), multiples of 128 (hybrid) / 64 (plain) above the trained grid for "
            "FcaFormer; the ONNX graph refuses other sizes. A model that cannot be traced dynamically is exported at "
            "a fixed size and the report says why. The input is normalised images (see the model's mean/std, also "
            "stored in the ONNX metadata)."))
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT", help="model name or run/checkpoint directory")
    p.add_argument("--format", default="onnx", choices=("onnx", "torch.export"), help="output format (default onnx)")
    p.add_argument("--img-size", type=positive_int, nargs="+", metavar=("H", "W"),
                   help="traced image size in pixels, H [W] (default: the size the model was built for; with "
                        "--dynamic it must be one of the dynamic sizes)")
    p.add_argument("--output", metavar="PATH", help="file to write (default MODEL.onnx / MODEL.pt2 here)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch and, where possible, height/width")
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch of a static export (default 1)")
    p.add_argument("--checkpoint", metavar="FILE", help="weights for a model name (ours or the authors' layout)")
    p.add_argument("--pretrained", action="store_true", help="the authors' released weights for a model name")
    p.add_argument("--model-kwargs", type=json_object, default=None, metavar="JSON",
                   help="model constructor arguments, e.g. '{\"num_classes\": 10}'")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "int8"), help=(
        "int8: ONNX with onnxruntime's dynamic quantisation (int8 weights of every MatMul / Gemm), verified against "
        "fp32 PyTorch within --atol (default 0.1 of the logit scale); bf16 is refused (onnxruntime's CPU provider "
        "has no bf16 products); default fp32"))
    p.add_argument("--atol", type=float, default=None, help="largest allowed |exported - PyTorch| per unit of logit "
                                                            "scale (default 1e-4; 0.1 for int8)")
    p.add_argument("--no-verify", action="store_true", help="skip the check against PyTorch")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    size = None
    if args.img_size:
        if len(args.img_size) > 2:
            raise ExportError(f"--img-size takes H or H W, got {len(args.img_size)} values")
        size = (args.img_size[0], args.img_size[-1])
    report = export_model(
        args.model, format=args.format, output=args.output, img_size=size, dynamic=args.dynamic,
        batch_size=args.batch_size, checkpoint_path=args.checkpoint, pretrained=args.pretrained, opset=args.opset,
        verify=not args.no_verify, atol=args.atol, overwrite=args.force, model_kwargs=args.model_kwargs,
        precision=args.precision)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
    return 0
