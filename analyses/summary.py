"""A one-page text summary of a run: provenance, status, progress, arrays, key numbers.

>>> print(describe("runs/rsa-gpt2-large"))   # doctest: +SKIP
"""

from __future__ import annotations

import json

from lamina.engine.reader import open_run


def tokenizer_text(model: dict) -> str:
    """Where a run's tokenizer came from, its kind, vocabulary size and hash (docs/models.md, "Tokenizers").

    >>> tokenizer_text({"tokenizer": "gguf", "tokenizer_kind": "byte-level BPE", "tokenizer_vocab_size": 49152,
    ...                 "tokenizer_sha256": "65e936ca5a6ad892"})
    'gguf (byte-level BPE, 49152 tokens, sha256 65e936ca5a6a...)'
    """
    where = {"model": "the model's own", "gguf": "the GGUF file's own", "--tokenizer": "named with --tokenizer"}
    source = str(model.get("tokenizer"))
    facts = [str(model[k]) for k in ("tokenizer_kind",) if model.get(k)]
    if model.get("tokenizer_vocab_size"):
        facts.append(f"{model['tokenizer_vocab_size']} tokens")
    if model.get("tokenizer_sha256"):
        facts.append(f"sha256 {str(model['tokenizer_sha256'])[:12]}...")
    path = f" {model['tokenizer_path']}" if model.get("tokenizer_path") and source != "gguf" else ""
    shown = source if source in ("gguf",) or source not in where else f"{source}: {where[source]}"
    return f"{shown}{path}" + (f" ({', '.join(facts)})" if facts else "")


def gguf_text(g: dict) -> str:
    """A GGUF source in one line: file, sha256, quantisation types."""
    quant = ", ".join(f"{k} x{v}" for k, v in (g.get("quantisation") or {}).items())
    return f"{g.get('file')} sha256 {g.get('sha256')} ({quant}; dequantised to {g.get('dequantised_to', '?')})"


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
    if model.get("tokenizer"):
        lines.append(f"tokenizer {tokenizer_text(model)}")
    if model.get("gguf"):
        lines.append(f"gguf      {gguf_text(model['gguf'])}")
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
