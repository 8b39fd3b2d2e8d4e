"""Logit drift of bf16 and int8 against fp32 for every full-size variant (issue 15, goal 4).

    python scripts/precision_drift.py                     # every full-size classifier, bf16 and int8
    python scripts/precision_drift.py 'crossvit_*' --precisions bf16

Each model is built at its default size with its own initialisation and then every parameter moved by seeded
Gaussian noise (std 0.02), so that its logits are of order one (fresh FcaFormer layer scales of 1e-6 would make
every logit ~0); a seeded batch of 4 standard-normal images is run in fp32 and through
:func:`crossformers.inference.to_precision` in each precision. int8 runs the quantised graph uncompiled
(``compile=False``: the numbers of the compiled model up to kernel rounding, in seconds instead of minutes).
Reported: max |logit - fp32| relative to max |fp32 logit|, and top-1 agreement -- over all images, and over the
"clear" ones, whose fp32 top-1 leads the runner-up by more than twice the largest drift (random weights give
1000-way near-ties, where a flip says nothing; on a clear image it would be an error). Writes ``--out`` (.md, .json).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import shlex
import time
from pathlib import Path

import torch

import crossformers
from crossformers.inference import precision_support, to_precision
from crossformers.profiling.measure import cpu_flags, cpu_name

#: our CPU-scale models and the dense backbones are not full-size classifiers
EXCLUDE = ("*_nano", "*_dense", "fcaformer_sh_l2")


def full_size_models(patterns: list[str]) -> list[str]:
    names = [n for n in crossformers.list_models() if not any(fnmatch.fnmatch(n, e) for e in EXCLUDE)]
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]


def drift(name: str, precisions: list[str], batch: int = 4, seed: int = 0) -> list[dict]:
    torch.manual_seed(seed)
    model = crossformers.create_model(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    size = tuple(model.pretrained_cfg["input_size"])
    x = torch.randn(batch, *size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref = model(x).float()
    rows = []
    for precision in precisions:
        t0 = time.perf_counter()
        reduced = to_precision(model, precision, compile=False)
        with torch.inference_mode():
            out = reduced(x).float()
        err = float((out - ref).abs().max())
        top2 = ref.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * err
        same = out.argmax(-1) == ref.argmax(-1)
        rows.append(dict(model=name, input=list(size), precision=precision,
                         max_abs_fp32=float(ref.abs().max()), rel_drift=err / float(ref.abs().max()),
                         top1_agreement=float(same.float().mean()), clear=int(clear.sum()),
                         clear_agree=int(same[clear].sum()), seconds=time.perf_counter() - t0))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("patterns", nargs="*", default=["*"], help="model name patterns (default: all full-size)")
    p.add_argument("--precisions", nargs="+", default=["bf16", "int8"])
    p.add_argument("--out", default="runs/precision_drift", help="output stem (.md and .json)")
    args = p.parse_args()
    precisions = [q for q in args.precisions if precision_support(q) is None]
    for q in set(args.precisions) - set(precisions):
        print(f"{q} skipped: {precision_support(q)}")
    rows = []
    for name in full_size_models(args.patterns):
        for r in drift(name, precisions):
            rows.append(r)
            print(f"{r['model']:<28} {r['precision']:<5} drift {r['rel_drift']:.2e} (max |fp32| "
                  f"{r['max_abs_fp32']:.2f}), top-1 agreement {r['top1_agreement']:.2f}, clear images "
                  f"{r['clear_agree']}/{r['clear']} agree, {r['seconds']:.1f} s", flush=True)
    cpu = f"{cpu_name()} ({', '.join(cpu_flags()) or 'no AVX-512 / AMX flags'})"
    lines = [f"CPU: {cpu}; torch {torch.__version__}; `python scripts/precision_drift.py "
             f"{' '.join(shlex.quote(p) for p in args.patterns)} --precisions {' '.join(precisions)}`", "",
             "| model | input | precision | max abs(logit - fp32) / max abs(fp32) | top-1 agreement (4 images) | "
             "agreement on clear images |", "|---|---|---|---|---|---|"]
    lines += [f"| `{r['model']}` | {r['input'][1]}x{r['input'][2]} | {r['precision']} | {r['rel_drift']:.2e} | "
              f"{r['top1_agreement'] * 4:.0f}/4 | {r['clear_agree']}/{r['clear']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(dict(cpu=cpu, rows=rows), indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
