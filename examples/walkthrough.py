"""A researcher's first session with lamina, offline: load a model, capture activations, run an analysis, read the
run, compare two runs.

    python examples/walkthrough.py [--out runs/walkthrough]

It uses GPT-2's architecture shrunk to 4 blocks of width 64 (a config.json written here) with seeded random
weights and GPT-2's own tokenizer, so it runs in about a minute on a laptop CPU without a network. For real work,
replace ``MODEL`` with a model of yours (``lamina.load_model("EleutherAI/pythia-160m")``, a checkpoint folder, a
``.gguf`` file or ``"smollm2-135m"``) and drop ``weights="random"`` and ``config=``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lamina


def main(out: str = "runs/walkthrough") -> dict:
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    config = root / "tiny-gpt2-config.json"
    config.write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 4,
                                  "n_embd": 64, "n_head": 4, "n_positions": 256, "vocab_size": 50257}))
    model_args = dict(weights="random", config=str(config))

    # 1. load: a TransformerLens bridge with classic hook names; what can be captured, and how fast
    model = lamina.load_model("gpt2", **model_args)
    print(model)
    table = lamina.hooks(model)
    print(f"{sum(i.fast for i in table.values())} of {len(table)} hook points run on the fast path")

    # 2. capture: keys are what you asked for; the last token of each text by default
    texts = ["The cat sat on the mat.", "A dog ran far away from the old mill.", "Rivers bend twice, then north."]
    acts = lamina.capture(model, texts, hooks="blocks.{layer}.hook_resid_post")
    resid = acts["blocks.{layer}.hook_resid_post"]  # [layer, sample, feature]
    print("residual stream", tuple(resid.shape), "norms per block", resid.norm(dim=-1).mean(-1).tolist())
    q2 = lamina.capture(model, texts, hooks="blocks.2.attn.hook_q", positions=1, return_type="xarray")
    print(q2["blocks.2.attn.hook_q"].dims)

    # 3. run: an analysis into a Zarr run (resumable, checksummed), exactly as `lamina run rsa` does
    first = lamina.run("rsa", model=model, out=str(root / "rsa-seed0"), permutations=20, progress=False,
                       overwrite=True)  # the walkthrough replaces its own runs when run again
    other = lamina.load_model("gpt2", seed=1, **model_args)  # another random draw of the weights
    second = lamina.run("rsa", model=other, out=str(root / "rsa-seed1"), seed=1, permutations=20, progress=False,
                        overwrite=True, figures=False)
    runs = [first, second]

    # 4. read: labelled, lazy (xarray + dask), every chunk checked
    run = lamina.open_run(runs[0].url)
    print(repr(run))
    tree = run.datatree()
    selectivity = tree["results"].selectivity.sel(component="V").values
    print("category selectivity of V per block", selectivity.round(3).tolist())
    assert lamina.verify(run).ok

    # 5. compare: the two runs on a relative-depth axis, with figures and a report page
    cmp = lamina.compare([r.url for r in runs], out=str(root / "compare-rsa"))
    print("comparison report:", cmp.report)
    return {"resid": tuple(resid.shape), "selectivity": selectivity, "report": cmp.report,
            "runs": [r.url for r in runs]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/walkthrough", help="folder for its runs (default: runs/walkthrough)")
    main(parser.parse_args().out)
