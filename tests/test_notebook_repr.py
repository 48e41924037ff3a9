"""What a notebook shows: ``repr(run)`` in one line, ``run._repr_html_()`` (provenance, status, arrays, figures
inline) checked against the run read with plain zarr, and ``LoadedModel``'s one-paragraph repr."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import zarr

import lamina


class Page(HTMLParser):
    """Tables as lists of rows (cell texts), images' src, and every text."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self.texts: list[str] = []
        self._table = self._row = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("class", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._row.append("")
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        self.texts.append(data)
        if self._row:
            self._row[-1] += data


@pytest.fixture(scope="module")
def rsa_run(gpt2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("repr") / "rsa"
    return lamina.run("rsa", model=str(gpt2_dir), out=str(out), permutations=10, progress=False)


def test_run_html_shows_provenance_status_arrays_and_figures(rsa_run):
    page = Page()
    page.feed(rsa_run._repr_html_())
    group = zarr.open_group(str(rsa_run.url), mode="r")
    attrs = json.loads(json.dumps(dict(group.attrs)))
    want = {}
    for path, node in group.members(max_depth=None):
        if isinstance(node, zarr.Array) and not path.startswith("_"):
            want[path] = [path, ", ".join(node.metadata.dimension_names or ()), " x ".join(map(str, node.shape)),
                          str(node.dtype)]
    rows = page.tables["arrays"]
    assert rows[0] == ["array", "dims", "shape", "dtype"]
    assert sorted(rows[1:]) == sorted(want.values())
    provenance = dict(page.tables["provenance"])
    assert provenance["model"].startswith(attrs["model"]["model"])
    assert str(attrs["model"]["n_layers"]) in provenance["model"]
    assert provenance["weights"] == attrs["weights"]
    assert "complete" in " ".join(page.texts)

    pngs = sorted((Path(rsa_run.folder) / "figures").glob("*.png"))
    assert pngs and len(page.images) == len(pngs)
    for src, png in zip(page.images, pngs):
        assert base64.b64decode(src.split(",", 1)[1]) == png.read_bytes()

    line = repr(rsa_run)
    assert "\n" not in line and line.startswith("<lamina.Run rsa") and f"{len(want)} arrays" in line
    assert f"{len(pngs)} figures" in line and "complete" in line


def test_unfinished_run_says_how_far(rsa_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(rsa_run.url, copy)
    meta = json.loads((copy / "zarr.json").read_text())
    meta["attributes"]["status"] = "running"  # as an interrupted run reads
    (copy / "zarr.json").write_text(json.dumps(meta))
    run = lamina.open_run(copy)
    done = run.progress()
    assert done and "running" in repr(run)
    page = Page()
    page.feed(run._repr_html_())
    status = " ".join(page.texts)
    for phase, (d, t) in done.items():
        assert f"{phase}: {d}/{t} units" in status


def test_loaded_model_repr_is_one_paragraph(gpt2_dir):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(gpt2_dir))
    text = repr(lamina.load_model(str(gpt2_dir)))
    assert "\n" not in text and len(text) < 400
    assert f"{cfg.n_layer} layers" in text and f"d_model {cfg.n_embd}" in text and "GPT2LMHeadModel" in text
    random = repr(lamina.load_model("gpt2", weights="random", device="meta"))
    assert "12 layers" in random and "scientifically meaningless" in random and "meta" in random
