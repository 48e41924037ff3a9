"""report.html of runs (written by ``lamina run``) and of comparisons: every image there, every key number the
store's, the random-weights warning on top, self-contained (and, where Chromium is installed, rendered offline).

Random weights are only ever full-size models (22 s for GPT-2 small here), so the random-weights page is a
tiny run whose provenance attributes are switched to what ``--weights random`` records; the report reads
nothing else.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import zarr

from lamina.analyses import rsa
from lamina.analyses.cli import main as cli_main
from lamina.analyses.compare import compare
from lamina.analyses.options import RunOptions
from lamina.engine.models import RANDOM_WEIGHTS_WARNING
from lamina.engine.store import consolidate

from .course_runs import ANALYSES, DEPTHS, checkpoints, course_runs, reference_curves
from .helpers import run_analysis

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and Path(p).is_file()), None)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


class Page(HTMLParser):
    """The parts of a report the tests read: images, links, tables' rows, captions, the order of things."""

    def __init__(self, text: str):
        super().__init__()
        self.imgs, self.hrefs, self.scripts_src, self.stylesheets = [], [], [], []
        self.order: list[str] = []  # "warning", "h1", "figure" in document order
        self.key_rows: list[tuple[str, str]] = []  # run report: (key, value text)
        self.cells: list[dict] = []  # comparison: {"curve", "series", "run", "at", "text"}
        self.captions: list[str] = []
        self._stack: list[tuple[str, dict]] = []
        self._text: list[str] | None = None
        self._row: dict = {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class") or ""
        if tag == "img":
            self.imgs.append(a["src"])
            return
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if tag == "script" and "src" in a:
            self.scripts_src.append(a["src"])
        if tag == "link":
            self.stylesheets.append(a.get("href"))
        if tag == "div" and "warning" in cls.split():
            self.order.append("warning")
        if tag == "h1":
            self.order.append("h1")
        if tag == "tr" and "key-number" in cls.split():
            self._row = {"kind": "key"}
        if tag == "tr" and "key-row" in cls.split():
            self._row = {"kind": "cmp", "curve": a["data-curve"], "series": a["data-series"]}
        if tag == "td" and "data-run" in a:
            self._row["run"] = int(a["data-run"])
        if tag in ("th", "td", "span", "figcaption") and (self._row or tag == "figcaption"):
            self._stack.append((tag, a))
            self._text = []
        if tag == "figure":
            self.order.append("figure")

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = {}
        if not self._stack or self._stack[-1][0] != tag:
            return
        _, a = self._stack.pop()
        text = "".join(self._text or []).strip()
        if tag == "figcaption":
            self.captions.append(" ".join(text.split()))
        elif self._row.get("kind") == "key" and tag == "th":
            self._row["key"] = text
        elif self._row.get("kind") == "key" and tag == "td":
            self.key_rows.append((self._row["key"], text))
        elif self._row.get("kind") == "cmp" and tag == "span" and "data-at" in a:
            self.cells.append({**{k: self._row[k] for k in ("curve", "series", "run")}, "at": a["data-at"],
                               "text": text})
        self._text = [] if self._stack else None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return course_runs(tmp_path_factory)


def _page(path: Path) -> Page:
    return Page(Path(path).read_text(encoding="utf-8"))


def _numbers(text: str) -> list[float]:
    return [float(x) for x in NUMBER.findall(text)]


def _self_contained(page: Page, folder: Path) -> None:
    assert not page.scripts_src and not page.stylesheets  # inline CSS and script only
    for ref in [*page.imgs, *page.hrefs]:
        assert "://" not in ref, ref  # nothing from the network, no absolute URL
        if not ref.startswith("#"):
            assert (folder / ref).is_file(), ref


@pytest.mark.parametrize("analysis", ANALYSES)
def test_run_report_has_every_figure_and_the_stored_key_numbers(analysis, runs):
    folder = Path(runs[analysis, DEPTHS[0]])
    page = _page(folder / "report.html")  # written by `lamina run` (the runner), not by the test
    pngs = sorted(f"figures/{p.name}" for p in (folder / "figures").glob("*.png"))
    assert pngs and sorted(page.imgs) == pngs
    pdfs = sorted(f"figures/{p.name}" for p in (folder / "figures").glob("*.pdf"))
    assert sorted(h for h in page.hrefs if h.endswith(".pdf")) == pdfs
    _self_contained(page, folder)

    attrs = zarr.open_group(str(folder), mode="r").attrs.asdict()
    summary = attrs["summary"]
    assert [k for k, _ in page.key_rows] == list(summary)  # every key number, in order
    for key, text in page.key_rows:
        value = summary[key]
        if isinstance(value, str):
            assert text == value
        else:  # every number shown is the stored one, exactly; None shows as n/a
            assert _numbers(text) == _numbers(json.dumps(value)), key
            assert text.count("n/a") == json.dumps(value).count("null"), key
    html = (folder / "report.html").read_text()
    for fact in (attrs["model"]["model"], attrs["stimuli_sha256"], attrs["created"], attrs["completed"],
                 attrs["versions"]["torch"], "figures_s"):
        assert fact in html
    assert "RANDOM WEIGHTS" not in html and "warning" not in page.order  # a checkpoint's weights
    assert len(page.captions) == len(pngs)
    assert all("Lecture" in c or "lecture" in c for c in page.captions)  # every figure: what the lecture found


def _as_random(url: str, to: Path) -> str:
    """A copy of ``url`` whose provenance says what `--weights random` records."""
    shutil.copytree(url, to)
    g = zarr.open_group(str(to), mode="r+")
    g.attrs.update({"weights": "random", "model": {**g.attrs["model"], "weights": "random", "seed": 0,
                                                   "warning": RANDOM_WEIGHTS_WARNING}})
    consolidate(str(to))
    return str(to)


def test_random_weights_warning_is_on_top_and_in_every_caption(runs, tmp_path, capsys):
    copy = _as_random(runs["rsa", DEPTHS[0]], tmp_path / "rsa-random")
    cli_main(["report", copy])
    assert capsys.readouterr().out.strip() == str(Path(copy) / "report.html")
    page = _page(Path(copy) / "report.html")
    assert page.order[:2] == ["warning", "h1"]  # before anything else
    html = (Path(copy) / "report.html").read_text()
    assert RANDOM_WEIGHTS_WARNING in html.split("<h1>")[0]
    assert page.captions and all("RANDOM WEIGHTS" in c and "meaningless" in c for c in page.captions)


def test_report_command_regenerates_and_refuses_an_incomplete_run(runs, tmp_path, capsys):
    copy = Path(shutil.copytree(runs["punct", DEPTHS[0]], tmp_path / "punct"))
    (copy / "report.html").unlink()
    cli_main(["report", str(copy)])
    assert len(_page(copy / "report.html").imgs) == len(list((copy / "figures").glob("*.png")))
    zarr.open_group(str(copy), mode="r+").attrs["status"] = "running"
    consolidate(str(copy))
    with pytest.raises(SystemExit) as e:
        cli_main(["report", str(copy)])
    assert e.value.code == 2 and "is running" in capsys.readouterr().err


def test_comparison_report_numbers_and_images(runs, tmp_path, capsys):
    urls = [runs["qkv", n] for n in DEPTHS]
    cmp = compare(urls, out=tmp_path / "cmp")
    folder = Path(cmp.out)
    page = _page(folder / "report.html")
    pngs = sorted(f"figures/{p.name}" for p in (folder / "figures").glob("*.png"))
    assert sorted(page.imgs) == pngs and len(pngs) == 2
    _self_contained(page, folder)
    assert "key_numbers.csv" in page.hrefs
    assert sum(h.endswith("report.html") for h in page.hrefs) == 1  # the run that has a report links to it
    assert page.cells
    for cell in page.cells:  # every number shown (4 significant digits) is the store's, recomputed with NumPy
        y = reference_curves(urls[cell["run"]], "qkv")[cell["curve"]][tuple(cell["series"].split(" · "))]
        want = {"first": y[0], "middle": y[len(y) // 2], "last": y[-1], "mean": np.nanmean(y)}[cell["at"]]
        assert float(cell["text"]) == pytest.approx(want, rel=5e-4, abs=1e-12), cell
    assert len(page.cells) == 24 * 4 * 2  # 2 curves x 2 roles x 6 blocks, 4 numbers, 2 runs
    assert all("Lecture" in c for c in page.captions) and "RANDOM WEIGHTS" not in " ".join(page.captions)

    (folder / "report.html").unlink()  # `lamina report FOLDER` re-renders a comparison from comparison.json
    cli_main(["report", str(folder)])
    assert _page(folder / "report.html").cells == page.cells


def test_comparison_with_a_random_weights_run_says_so(runs, tmp_path):
    random = _as_random(runs["rsa", DEPTHS[1]], tmp_path / "rsa-random")
    cmp = compare([runs["rsa", DEPTHS[0]], random], out=tmp_path / "cmp")
    page = _page(Path(cmp.report))
    assert page.order[:2] == ["warning", "h1"]
    assert cmp.labels[1].endswith("random weights")
    assert all(f"RANDOM WEIGHTS: {cmp.labels[1]}" in c for c in page.captions) and len(page.captions) == 2


def test_report_of_a_run_on_an_fsspec_url(tmp_path_factory):
    fsspec = pytest.importorskip("fsspec")
    ckpt = checkpoints(tmp_path_factory)
    url = "memory://lamina-report-test/rsa"
    run = run_analysis("rsa", rsa.Config(permutations=5), RunOptions(model=str(ckpt[DEPTHS[0]]), out=url,
                                                                     progress=False))
    fs = fsspec.filesystem("memory")
    page = Page(fs.cat(f"{run.url.removeprefix('memory://')}/report.html").decode())
    assert page.imgs and all(fs.exists(f"/lamina-report-test/rsa/{src}") for src in page.imgs)


# ---- rendered by a browser, offline ---------------------------------------------------------------------------


def _render(page: Path, profile: Path) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", "--disable-extensions", "--disable-sync", f"--user-data-dir={profile}",
           "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _images(dom: str) -> tuple[int, int]:
    m = re.search(r'<body[^>]*data-images="(\d+)"[^>]*data-images-broken="(\d+)"', dom)
    assert m, "the page's load check did not run"
    return int(m.group(1)), int(m.group(2))


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here (/usr/bin/chromium; Debian package chromium)")
def test_chromium_renders_every_image_offline(runs, tmp_path):
    run_page = Path(runs["length", DEPTHS[0]]) / "report.html"
    cmp = compare([runs["punct", n] for n in DEPTHS], out=tmp_path / "cmp")
    for page in (run_page, Path(cmp.report)):
        n, broken = _images(_render(page, tmp_path / "profile"))
        assert n == len(_page(page).imgs) > 0 and broken == 0, page
    alone = tmp_path / "alone"  # control: the same page without its figures/ folder shows every image as missing
    alone.mkdir()
    shutil.copy(run_page, alone / "report.html")
    n, broken = _images(_render(alone / "report.html", tmp_path / "profile"))
    assert broken == n > 0


def test_report_of_an_overwritten_run_names_the_run_not_its_staging_folder(tmp_path_factory, tmp_path):
    ckpt = checkpoints(tmp_path_factory)
    opts = RunOptions(model=str(ckpt[DEPTHS[0]]), out=str(tmp_path / "rsa"), progress=False)
    run_analysis("rsa", rsa.Config(permutations=5), opts)
    run = run_analysis("rsa", rsa.Config(permutations=6), RunOptions(**{**opts.__dict__, "overwrite": True}))
    html = (Path(run.url) / "report.html").read_text()
    assert "lamina-new" not in html and f"lamina report {Path(run.url).resolve()}" in html
    assert "permutations: 6" in html
