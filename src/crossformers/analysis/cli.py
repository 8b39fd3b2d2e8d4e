"""``crossformers analyze ...``: the analyses of :mod:`crossformers.analysis` on the command line.

Plugged into ``crossformers`` by :func:`crossformers.cli._add_plugin_subcommands`. Each subcommand loads the model(s)
(our run/checkpoint directories, or model names with optional ``--checkpoint`` / ``--model-kwargs``), preprocesses the
images like the model's validation data, and writes a PNG and a JSON file into ``--output``::

    crossformers analyze attention runs/nano --data fashion-mnist --num-images 2 --queries 28,28 10,40
    crossformers analyze distance runs/nano --data fashion-mnist --num-images 16
    crossformers analyze amplitude crossformer_small crossformer_pp_small --images a.png b.png
    crossformers analyze cross-tokens runs/nano --data fashion-mnist
    crossformers analyze cam runs/nano --images shoe.png --method gradcam++
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from timm.utils import unwrap_model

from crossformers.cli_types import add_command_group, json_object, setup_logging
from crossformers.engine.distributed import resolve_device
from crossformers.fileio import atomic_write_text

from .cam import class_activation_maps
from .errors import AnalysisError, EmptyInputError
from .inputs import dataset_images, display_images, load_model, prepare_images
from .measures import activation_amplitude, attention_maps, cross_token_share, mean_attention_distance, parse_query
from .plots import plot_amplitude, plot_attention_maps, plot_cams, plot_cross_token_share, plot_distance

__all__ = ["add_subcommands"]

log = logging.getLogger("crossformers.analysis")

#: the keys of crossformers.analysis.cam.CAM_METHODS (kept here so that building the parser imports no torch)
CAM_METHOD_NAMES = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam")


def _analysis(sub: argparse._SubParsersAction, name: str, func, several: bool, num_images: int,
              blocks: str | None = None, **parser_kwargs) -> argparse.ArgumentParser:
    """Add one analysis (``help``/``description`` in ``parser_kwargs``) with the common arguments; ``func`` runs it."""
    p = sub.add_parser(name, **parser_kwargs)
    _common(p, several, num_images, blocks)
    p.set_defaults(func=func)
    return p


def _common(p: argparse.ArgumentParser, several: bool, num_images: int, blocks: str | None = None) -> None:
    """The arguments every analysis takes; ``blocks``: what ``--blocks`` defaults to (None: no ``--blocks``)."""
    if blocks is not None:
        p.add_argument("--blocks", nargs="+", metavar="BLOCK", help="block names, shell patterns ('stages.2.*') or "
                                                                    f"indices (default: {blocks})")
    if several:
        p.add_argument("models", nargs="+", metavar="CHECKPOINT_OR_MODEL",
                       help="one or more run/checkpoint directories or model names (several: one comparison plot)")
    else:
        p.add_argument("models", nargs=1, metavar="CHECKPOINT_OR_MODEL", help="run/checkpoint directory or model name")
    src = p.add_argument_group("images (one of)")
    src.add_argument("--images", nargs="+", metavar="IMAGE", help="image files (resized per the model's preprocessing)")
    src.add_argument("--data", metavar="NAME", help="'fashion-mnist' or an image-folder root: take dataset images")
    src.add_argument("--num-images", type=int, default=num_images,
                     help=f"with --data: how many images, balanced over classes (default {num_images})")
    src.add_argument("--split", default="val", choices=("val", "train", "test"), help="with --data: split (default val)")
    m = p.add_argument_group("model")
    m.add_argument("--checkpoint", metavar="FILE", help="weights for a single model given by name (official or ours)")
    m.add_argument("--pretrained", action="store_true", help="the authors' released weights for model names")
    m.add_argument("--ema", action="store_true", help="the EMA weights of our checkpoints")
    m.add_argument("--model-kwargs", nargs="+", type=json_object, metavar="JSON",
                   help="constructor arguments for model names: one JSON object for all models, or one per model")
    m.add_argument("--img-size", type=int, metavar="PX", help="square input side in pixels (model names: also the "
                                                              "construction size)")
    m.add_argument("--labels", nargs="+", metavar="LABEL", help="a plot label per model")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    p.add_argument("--output", default="runs/analysis", metavar="DIR", help="directory for the PNG and JSON "
                                                                             "(default runs/analysis)")
    p.add_argument("--json", action="store_true", help="also print the JSON result")


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``analyze`` with its sub-subcommands on the ``crossformers`` parser."""
    sub = add_command_group(subparsers, "analyze", dest="analysis", metavar="ANALYSIS",
                            help="look inside a model: attention maps, distance, amplitude, CAMs",
                            description="Pictures of a model's insides, as in the CrossFormer++, FcaFormer and "
                                        "CrossViT papers, for your own checkpoints and images (see docs/analysis.md).")

    a = _analysis(sub, "attention", _cmd_attention, several=False, num_images=2, blocks="every attention block",
                  help="per-block attention maps of query positions drawn on the images",
                  description="Attention of query positions in every attention block, overlaid on the images "
                              "(attention.png, attention.json). CrossFormer: the query's SDA/LDA group in image "
                              "coordinates; FcaFormer: own tokens and cross tokens of earlier blocks in separate "
                              "rows; CrossViT: fusion blocks show one branch's CLS attending to the other's "
                              "patches (default blocks for CrossViT: the fusion blocks).")
    a.add_argument("--queries", nargs="+", metavar="Y,X", help="query positions in pixels of the model input "
                                                               "(default: the image centre)")
    a.add_argument("--head", type=int, help="one head instead of the mean over heads")

    d = _analysis(sub, "distance", _cmd_distance, several=True, num_images=16, blocks="every attention block",
                  help="mean attention distance per block in input pixels (JSON + plot)",
                  description="Mean attention distance per block (CrossFormer++ Sec. 3): attention-weighted "
                              "distance between query and key token centres in input pixels, averaged over "
                              "heads, images and queries (distance.json, distance.png).")
    d.add_argument("--queries", nargs="+", metavar="Y,X", help="only these query positions (default: every token)")

    _analysis(sub, "amplitude", _cmd_amplitude, several=True, num_images=16, blocks="every block",
              help="max and mean |output| of every block (JSON + plot)",
              description="Maximum and mean absolute output of every block over the images (CrossFormer++ Sec. 3; "
                          "compare CrossFormer and CrossFormer++ to see the amplitude cooling layers) "
                          "(amplitude.json, amplitude.png).")

    _analysis(sub, "cross-tokens", _cmd_cross_tokens, several=True, num_images=16, blocks="every Fca block",
              help="FcaFormer: attention share on each earlier block's cross tokens",
              description="FcaFormer only (paper Fig. 5): share of attention mass the regular tokens of each Fca "
                          "block put on the cross tokens of each earlier block (cross_tokens.json, "
                          "cross_tokens.png). Give several checkpoints (e.g. with and without learnable scale "
                          "factors) to compare.")

    g = _analysis(sub, "cam", _cmd_cam, several=False, num_images=4, help="class activation maps (grad-cam package)",
                  description="Class activation maps with the grad-cam package (cam.png, cam.json). Default "
                              "layer: the last stage (CrossFormer, FcaFormer), the last block of each branch "
                              "(CrossViT).")
    g.add_argument("--method", default="gradcam", choices=CAM_METHOD_NAMES, help="CAM method (default gradcam)")
    g.add_argument("--layer", nargs="+", metavar="NAME", help="target module names, e.g. stages.2")
    g.add_argument("--target-class", type=int, help="class index to explain (default: the predicted class)")


# ---------------------------------------------------------------------------------------------------- helpers
def _setup() -> None:
    setup_logging()


def _load_models(args: argparse.Namespace) -> list:
    specs = list(args.models)
    if not specs:
        raise EmptyInputError("no model given")
    kwargs = args.model_kwargs or []
    if len(kwargs) not in (0, 1, len(specs)):
        raise AnalysisError(f"--model-kwargs takes one JSON object for all models or one per model ({len(specs)}), "
                            f"got {len(kwargs)}")
    if args.checkpoint and len(specs) != 1:
        raise AnalysisError("--checkpoint applies to a single model name: pass one model, or use run directories")
    labels = args.labels or []
    if labels and len(labels) != len(specs):
        raise AnalysisError(f"--labels needs one label per model ({len(specs)}), got {len(labels)}")
    device = resolve_device(args.device)
    out = []
    for i, spec in enumerate(specs):
        kw = kwargs[0] if len(kwargs) == 1 else (kwargs[i] if kwargs else None)
        lm = load_model(spec, args.checkpoint, use_ema=args.ema, pretrained=args.pretrained, model_kwargs=kw,
                        img_size=args.img_size, label=labels[i] if labels else None)
        lm.model.to(device)
        out.append(lm)
    return out


def _images(args: argparse.Namespace, loaded):
    if args.images is not None and args.data is not None:
        raise AnalysisError("give either --images or --data, not both")
    if args.images is None and args.data is None:
        raise AnalysisError("no images: pass --images FILE ... or --data NAME (e.g. --data fashion-mnist)")
    if args.data is not None:
        return dataset_images(args.data, args.num_images, loaded.preprocessing, split=args.split)
    return prepare_images(args.images, loaded.preprocessing, loaded.model)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _finish(args: argparse.Namespace, files: list[Path], result: Any) -> int:
    if args.json:
        print(json.dumps(result, indent=2, default=_json_default))
    for f in files:
        print(f"wrote {f}")
    return 0


def _model_info(lm, batch) -> dict[str, Any]:
    return dict(label=lm.label, model=lm.name, source=lm.source, num_images=int(batch.tensor.shape[0]),
                images=batch.names, input_size=list(lm.preprocessing["input_size"]))


def _title(lm, batch, what: str) -> str:
    source = lm.source
    if "/" in source:  # a checkpoint path: its last two parts (RUN/best) are enough in a title
        source = "/".join(Path(source).parts[-2:])
    source = "" if source in lm.label or source == "module" else f" [{source}]"
    return f"{what} - {lm.label}{source} - {batch.tensor.shape[0]} image(s)"


# ---------------------------------------------------------------------------------------------------- commands
def _cmd_attention(args: argparse.Namespace) -> int:
    _setup()
    queries = [parse_query(q) for q in args.queries] if args.queries else None
    (lm,) = _load_models(args)
    batch = _images(args, lm)
    blocks = args.blocks
    defaults = getattr(unwrap_model(lm.model), "attention_map_blocks", None)
    if blocks is None and callable(defaults):
        blocks = defaults()  # the family's default (CrossViT: its fusion layers)
    maps = attention_maps(lm, batch, queries=queries, blocks=blocks, head=args.head)
    out = Path(args.output)
    png = plot_attention_maps(maps, display_images(batch.tensor, lm.preprocessing), out / "attention.png",
                              _title(lm, batch, "Attention maps" + (f" (head {args.head})" if args.head is not None
                                                                    else " (mean over heads)")), batch.names)
    result = dict(**_model_info(lm, batch), maps=[
        dict(image=batch.names[m.image], query_px=list(m.query),
             query_centre_px=None if m.query_centre is None else list(m.query_centre), block=m.block.name,
             kind=m.block.kind, mass=m.mass, peak=m.peak, uniform=m.uniform, meta=m.meta) for m in maps])
    _write_json(out / "attention.json", result)
    return _finish(args, [png, out / "attention.json"], result)


def _run_each(args: argparse.Namespace, fn) -> tuple[list, list]:
    loaded = _load_models(args)
    results, batches = [], []
    for lm in loaded:
        batch = _images(args, lm)
        results.append((lm, fn(lm, batch)))
        batches.append(batch)
    return results, batches


def _compare(args: argparse.Namespace, name: str, measure: Callable[[Any, Any], Any], plot: Callable[..., Path],
             title: Callable[[int], str], entry: Callable[[Any, Any, Any], dict[str, Any]]) -> int:
    """One measure on every model: ``name``.png (one comparison plot) and ``name``.json in ``--output``.

    ``measure(lm, batch)`` gives a model's result ``r``, ``plot([(label, r), ...], png, title(num_images))`` draws them
    and ``entry(lm, r, batch)`` is the model's record in the JSON's ``models`` list.
    """
    results, batches = _run_each(args, measure)
    out = Path(args.output)
    png = plot([(lm.label, r) for lm, r in results], out / f"{name}.png", title(batches[0].tensor.shape[0]))
    result = dict(models=[entry(lm, r, b) for (lm, r), b in zip(results, batches, strict=True)])
    return _write_result(args, out / f"{name}.json", png, result)


def _write_result(args: argparse.Namespace, path: Path, png: Path, result: Any) -> int:
    _write_json(path, result)
    return _finish(args, [png, path], result)


def _cmd_distance(args: argparse.Namespace) -> int:
    _setup()
    queries = [parse_query(q) for q in args.queries] if args.queries else None
    return _compare(args, "distance",
                    lambda lm, b: mean_attention_distance(lm, b, blocks=args.blocks, queries=queries,
                                                          batch_size=args.batch_size),
                    plot_distance,
                    lambda n: f"Mean attention distance per block ({n} image(s), mean over heads and "
                              f"{'chosen' if queries else 'all'} queries)",
                    lambda lm, r, b: dict(**_model_info(lm, b), queries=args.queries or "all", blocks=r))


def _cmd_amplitude(args: argparse.Namespace) -> int:
    _setup()
    return _compare(args, "amplitude",
                    lambda lm, b: activation_amplitude(lm, b, blocks=args.blocks, batch_size=args.batch_size),
                    plot_amplitude, lambda n: f"Block output amplitude over {n} image(s)",
                    lambda lm, r, b: dict(**_model_info(lm, b), blocks=r))


def _cmd_cross_tokens(args: argparse.Namespace) -> int:
    _setup()
    return _compare(args, "cross_tokens",
                    lambda lm, b: cross_token_share(lm, b, blocks=args.blocks, batch_size=args.batch_size),
                    plot_cross_token_share,
                    lambda n: f"Attention mass on cross tokens of earlier blocks ({n} image(s), mean over heads and "
                              f"tokens)",
                    lambda lm, r, b: dict(**_model_info(lm, b), **r))


def _cmd_cam(args: argparse.Namespace) -> int:
    _setup()
    (lm,) = _load_models(args)
    batch = _images(args, lm)
    r = class_activation_maps(lm, batch, method=args.method, layers=args.layer, target_classes=args.target_class)
    names = lm.classes or [str(i) for i in range(max(max(r["predicted"]), max(r["targets"])) + 1)]
    captions = [f"{n}\npred {names[p]} ({q:.2f})" + (f", CAM of {names[t]}" if t != p else "")
                for n, p, q, t in zip(batch.names, r["predicted"], r["probability"], r["targets"], strict=True)]
    out = Path(args.output)
    png = plot_cams(display_images(batch.tensor, lm.preprocessing), r["cams"], out / "cam.png", captions,
                    _title(lm, batch, f"{args.method} on {', '.join(r['layers'])}"))
    result = dict(**_model_info(lm, batch), method=args.method, layers=r["layers"], predicted=r["predicted"],
                  probability=r["probability"], targets=r["targets"],
                  classes=[names[p] for p in r["predicted"]])
    return _write_result(args, out / "cam.json", png, result)
