"""A one-page text summary of a run: provenance, status, progress, arrays, key numbers.

>>> print(describe("runs/rsa-gpt2-large"))   # doctest: +SKIP
"""

from __future__ import annotations

import json

from lamina.engine.reader import open_run


def describe(url: str) -> str:
    run = open_run(url)
    a = run.attrs
    model = a.get("model", {})
    lines = [f"run       {url}", f"experiment {a.get('experiment')}   status {run.status.upper()}"]
    if run.status == "drawing":
        lines.append("progress  data complete; the figures and report are not written yet (run the same command "
                     "again to finish them)")
    elif not run.complete:
        prog = run.progress()
        got = ", ".join(f"{k}: {d}/{t} units" for k, (d, t) in prog.items()) or "nothing captured yet"
        lines.append(f"progress  {got}  (run the same command again to resume)")
    lines.append(f"model     {model.get('model')} ({model.get('architecture')}, {model.get('n_layers')} layers, "
                 f"d_model {model.get('d_model')})")
    lines.append(f"weights   {a.get('weights')}" + (f" seed {a.get('seed')}" if a.get('weights') == 'random' else ""))
    if model.get("warning"):
        lines.append(f"WARNING   {model['warning']}")
    lines.append(f"dtype     {a.get('dtype')}   device {a.get('device')}   world size {a.get('world_size', 1)}")
    lines.append(f"stimuli   sha256 {str(a.get('stimuli_sha256'))[:16]}...   created {a.get('created')}")
    if a.get("timings"):
        lines.append("timings   " + ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in a["timings"].items()))
    lines.append("arrays:")
    coords: dict[str, list[str]] = {}
    for name in run.arrays():
        arr = run[name]
        group, _, leaf = name.rpartition("/")
        if leaf in run.dims(name) or (leaf.endswith("_bounds") and leaf.removesuffix("_bounds") in run.dims(name)):
            coords.setdefault(group or "/", []).append(leaf)  # a coordinate variable
            continue
        dims = ", ".join(f"{d}={s}" for d, s in zip(run.dims(name), arr.shape))
        dtype = "str" if arr.dtype.kind in "OTU" else str(arr.dtype)
        lines.append(f"  {name:<30} {dtype:<8} ({dims})")
    if coords:
        lines.append("coordinates: " + "; ".join(f"{g}: {', '.join(v)}" for g, v in coords.items()))
    summary = a.get("summary")
    if summary:
        lines.append("key numbers:")
        for k, v in summary.items():
            lines.append(f"  {k}: {json.dumps(v, default=str) if not isinstance(v, str) else v}")
    return "\n".join(lines)
