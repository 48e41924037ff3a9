"""Captions of the report: what each figure shows and what the lecture found, from the analysis' own captions.

>>> caps = ((r"demo_block(?P<l>\d+)", "Block {l}", "The mean at block {l}.", "Nothing yet."),)
>>> c = run_caption("demo_block3", {"weights": "pretrained"}, caps)
>>> c["title"], c["shows"], c["warning"]
('Block 3', 'The mean at block 3.', '')
>>> run_caption("demo_block3", {"weights": "random"}, caps)["warning"][:14]
'RANDOM WEIGHTS'

A stem no caption of the analysis matches gets its name as the title and no finding.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from lamina.engine.labelled import Labelled

RANDOM_CAPTION = ("RANDOM WEIGHTS: this run's model has random weights, so this figure is scientifically "
                  "meaningless (architecture, plumbing and speed only); the lecture finding below does not apply.")

# (pattern, title, what it shows, what the lecture found); {name} fields come from the pattern's groups.
# Each analysis declares its own (``Analysis.captions``, e.g. lamina/analyses/qkv/captions.py); plugins too.
Entry = tuple[str, str, str, "str | Callable[[Mapping[str, str]], str]"]


def run_caption(stem: str, attrs: Mapping, captions: Sequence[Entry] = ()) -> dict[str, str]:
    """``{"title", "shows", "found", "warning"}`` of the run figure ``stem`` from the analysis' ``captions``
    (warning: random weights)."""
    warning = RANDOM_CAPTION if attrs.get("weights") == "random" else ""
    for pattern, title, shows, found in captions:
        m = re.fullmatch(pattern, stem)
        if m:
            g = m.groupdict()
            text = found(g) if callable(found) else found
            return {"title": title.format(**g), "shows": shows.format(**g), "found": text.strip(),
                    "warning": warning}
    return {"title": stem, "shows": "Drawn by the analysis' plot function (its captions do not describe it).",
            "found": "", "warning": warning}


def figure_order(captions: Sequence[Entry] = ()) -> Callable[[str], tuple[int, int, str]]:
    """Sort key: the order of the analysis' ``captions`` (the plot module's order; cosine before
    correlation), unknown stems last by name.

    >>> caps = ((r"q_block\d+_\w+", "", "", ""), (r"q_layers_\w+", "", "", ""))
    >>> sorted(["q_layers_cosine", "q_block6_correlation", "x", "q_block6_cosine"], key=figure_order(caps))
    ['q_block6_cosine', 'q_block6_correlation', 'q_layers_cosine', 'x']
    """
    patterns = [re.compile(p) for p, *_ in captions]

    def key(stem: str) -> tuple[int, int, str]:
        stat = 1 if "correlation" in stem else 0
        for i, rx in enumerate(patterns):
            if rx.fullmatch(stem):
                return i, stat, stem
        return len(patterns), stat, stem

    return key


def comparison_caption(stem: str, experiment: str, curves: Mapping[str, Labelled],
                       runs: Sequence[Mapping]) -> dict[str, str]:
    """The caption of a ``lamina compare`` figure, from the curve's own attributes."""
    name = stem.removeprefix(f"compare_{experiment}_")
    c = curves.get(name)
    random = [r["label"] for r in runs if r.get("weights") == "random"]
    warning = (f"RANDOM WEIGHTS: {', '.join(random)} — scientifically meaningless; the lecture finding does not apply "
               "to these runs.") if random else ""
    if c is None:
        return {"title": stem, "shows": "", "found": "", "warning": warning}
    what = str(c.attrs.get("long_name", name))
    depth = "hidden state / (n_states − 1)" if "state" in c.dims else "block / (n_blocks − 1)"
    unit = "states" if "state" in c.dims else "blocks"
    runs_text = ", ".join(f"{r['label']}: {r['n_depth']} {unit}" for r in runs)
    if c.attrs.get("plot") == "heatmap":
        shows = (f"{what}: one depth × value heatmap per run, side by side on one colour scale (runs and their "
                 f"depths: {runs_text}).")
    else:
        panels = " × ".join(d for d in c.dims[:-1])
        shows = (f"{what} against relative depth = {depth}, one line per run ({runs_text})"
                 + (f"; one panel per {panels}." if panels else "."))
    if c.attrs.get("note"):
        shows += " " + str(c.attrs["note"])
    return {"title": what[:1].upper() + what[1:], "shows": shows, "found": str(c.attrs.get("finding", "")),
            "warning": warning}
