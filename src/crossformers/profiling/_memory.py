"""Child process of :func:`crossformers.profiling.measure.rss_peak_subprocess` (not a public entry point).

``python -m crossformers.profiling._memory '<json spec>'`` prints one JSON line: the RSS after the imports and the
peak RSS after inference at each requested batch size, in MiB.
"""
from __future__ import annotations

import json
import sys

import torch

from crossformers.profiling.measure import _maxrss_kib, _proc_status_kib
from crossformers.profiling.profile import build_model_for_profile, prepare_model, resolve_dtype


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    baseline_kib = _proc_status_kib("VmRSS") or _maxrss_kib()
    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    _, dtype = resolve_dtype(spec.get("dtype", "fp32"))
    model = build_model_for_profile(spec["model"], spec.get("model_kwargs"))
    model = prepare_model(model, torch.device("cpu"), dtype, fuse=bool(spec.get("fuse")),
                          channels_last=bool(spec.get("channels_last")), onednn_linear=spec.get("onednn_linear"),
                          pack_weights=bool(spec.get("pack_weights")))
    chans, (h, w) = int(spec["in_chans"]), spec["img_size"]
    peak, increase = {}, {}
    with torch.inference_mode():
        for batch in spec.get("batch_sizes", [1]):
            x = torch.zeros(int(batch), chans, int(h), int(w), dtype=dtype)
            if spec.get("channels_last"):
                x = x.contiguous(memory_format=torch.channels_last)
            for _ in range(2):
                model(x)
            del x
            # VmHWM: this process's own high-water mark. ru_maxrss is not: Linux carries the forking parent's RSS
            # into it across exec, so a child of a large process would report the parent's size.
            now = _proc_status_kib("VmHWM") or _maxrss_kib()
            peak[int(batch)] = now / 1024.0
            increase[int(batch)] = (now - baseline_kib) / 1024.0
    print(json.dumps({"baseline_mib": baseline_kib / 1024.0, "peak_mib": peak, "increase_mib": increase}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
