"""The authoring contract, enforced by the runner: a Spec is checked before any work, an analysis' own exception
is one line naming analysis and stage, ``Data.acts`` names what exists, and errors spell parameters the way
their caller does (``overwrite=True`` in Python, ``--overwrite`` on the command line)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

import lamina
from lamina.analyses import runner
from lamina.analyses.cli import main as cli_main
from lamina.analyses.kit import (
    Capture,
    Labelled,
    MeanVar,
    Pass,
    Selector,
    Spec,
    batch_inputs,
    encode_texts,
    index_coord,
    layer_hooks,
    option,
)
from lamina.engine.errors import AnalysisError, PluginError, StoreExistsError

WORDS = "a long road runs past the old mill then north rivers bend twice under grey skies".split()
_ids = itertools.count()


@dataclasses.dataclass(frozen=True)
class Config:
    n: int = option(4, "texts", min=1)
    edges: tuple[int, ...] = option((0, 1), "bucket edges (a typed list: --edges 0,1,4,16)")


def _batch(model, n, seed=None):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(n)]
    return encode_texts(model.tokenizer, texts, n_ctx=model.n_ctx, bos_token_id=model.bos_token_id)


def analysis(kind: str) -> lamina.Analysis:
    """A plugin-style analysis whose spec or compute breaks the contract in way ``kind``."""

    def spec(cfg, model):
        batch = _batch(model, cfg.n, seed=0 if kind == "fixed" else None)
        cap = Capture(
            "acts/resid", layer_hooks("blocks.{layer}.hook_resid_post", range(model.n_layers)), Selector.every()
        )
        if kind == "phase":
            passes = (Pass(batch, (cap,)), Pass(batch, (Capture("acts/other", cap.hooks, Selector.every()),)))
        elif kind == "reducer":
            passes = (Pass(batch, (cap,), keep=False, reducers=(MeanVar("acts/resid"), MeanVar("acts/resid"))),)
        else:
            passes = (Pass(batch, (cap,)),)
        return Spec(passes=passes, stimuli_sha256=batch.sha256(), inputs=batch_inputs(batch))

    def compute(data, spec, cfg, ctx):
        if kind == "raises":
            return {"results/x": Labelled(np.zeros(2), ("i",), attrs={"ratio": 1 / 0})}
        if kind == "acts":
            data.acts("acts/typo")
        x = data.acts("acts/resid").flatten(1).mean(1).cpu().numpy()
        return {"results/mean": Labelled(x, ("layer",), {"layer": index_coord(len(x))})}

    def plot(run, folder):  # reads only the run
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot(run.numpy("results/mean"))
        fig.savefig(folder / "resid_mean.png")
        plt.close(fig)
        return [folder / "resid_mean.png"]

    captions = ((r"resid_mean", "Mean of the residual stream", f"The {kind} caption: mean over tokens.", "Nothing."),)
    figures = {"plot": plot, "captions": captions} if kind == "figure" else {}
    return lamina.register(
        lamina.Analysis(
            name=f"contract_{kind}_{next(_ids)}", title=kind, Config=Config, spec=spec, compute=compute, **figures
        )
    )


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: a refusal must come before any load or capture."""

    def refuse(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(runner, "load_model", refuse)


@pytest.mark.parametrize(
    "kind, needle", [("phase", "share the phase 'capture'"), ("reducer", "two reducer names 'meanvar'")]
)
def test_a_bad_spec_is_refused_before_any_capture(kind, needle, gpt2_dir, tmp_path, no_model_load, capsys):
    a = analysis(kind)
    with pytest.raises(PluginError, match=needle) as e:
        lamina.run(a.name, model=str(gpt2_dir), out=str(tmp_path / "py"), progress=False)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{a.name} spec: ")
    with pytest.raises(SystemExit) as ex:
        cli_main(["run", a.name, "--model", str(gpt2_dir), "--out", str(tmp_path / "cli"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert ex.value.code == 2 and err.count("\n") == 0 and needle in err and "Traceback" not in err
    assert not (tmp_path / "py").exists() and not (tmp_path / "cli").exists()


def test_an_exception_in_compute_is_one_line_naming_analysis_and_stage(gpt2_dir, tmp_path, capsys, monkeypatch):
    a = analysis("raises")
    with pytest.raises(AnalysisError) as e:
        lamina.run(a.name, model=str(gpt2_dir), out=str(tmp_path / "py"), progress=False, figures=False)
    assert str(e.value) == f"{a.name} compute: ZeroDivisionError: division by zero"
    assert isinstance(e.value.__cause__, ZeroDivisionError)
    outs = (str(tmp_path / f"cli{i}") for i in range(3))  # the stimuli are random: one run folder per command

    def argv():
        return ["run", a.name, "--model", str(gpt2_dir), "--out", next(outs), "--no-progress"]

    monkeypatch.delenv("LAMINA_DEBUG", raising=False)
    with pytest.raises(SystemExit) as ex:
        cli_main(argv())
    err = capsys.readouterr().err.strip()
    assert ex.value.code == 2 and err == f"lamina: error: {a.name} compute: ZeroDivisionError: division by zero"
    monkeypatch.setenv("LAMINA_DEBUG", "1")
    with pytest.raises(SystemExit):
        cli_main(argv())
    err = capsys.readouterr().err
    assert "Traceback" in err and "1 / 0" in err and err.rstrip().endswith("division by zero")
    monkeypatch.delenv("LAMINA_DEBUG")
    with pytest.raises(SystemExit):
        cli_main([*argv(), "--debug"])
    assert "Traceback" in capsys.readouterr().err


def test_data_acts_lists_the_captures_that_exist(gpt2_dir, tmp_path):
    a = analysis("acts")
    with pytest.raises(AnalysisError) as e:
        lamina.run(a.name, model=str(gpt2_dir), out=str(tmp_path / "run"), progress=False, figures=False)
    assert str(e.value) == (
        f"{a.name} compute: data.acts('acts/typo'): no such capture; the stored captures are: acts/resid"
    )


def test_an_existing_run_names_overwrite_as_its_caller_spells_it(gpt2_dir, tmp_path, capsys):
    a = analysis("ok")
    out = tmp_path / "run"
    run = lamina.run(a.name, model=str(gpt2_dir), out=str(out), progress=False, figures=False)
    assert run.numpy("results/mean").shape == (3,)
    with pytest.raises(StoreExistsError) as e:
        lamina.run(a.name, model=str(gpt2_dir), out=str(out), progress=False, figures=False)
    assert "overwrite=True" in str(e.value) and f"out={str(out)!r}" in str(e.value) and "--" not in str(e.value)
    with pytest.raises(SystemExit) as ex:
        cli_main(["run", a.name, "--model", str(gpt2_dir), "--out", str(out), "--no-progress", "--no-figures"])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "pass --overwrite" in err and f"--out {str(out)!r}" in err
    assert "overwrite=" not in err


def test_option_bounds_are_in_help_and_enforced_the_same_from_cli_and_python(gpt2_dir, tmp_path, capsys):
    a = analysis("ok")
    try:
        cli_main(["run", a.name, "--help"])
    except SystemExit as e:
        assert e.code in (0, None)
    assert "texts (>= 1)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(lamina.errors.InputError) as e:
        lamina.run(a.name, model=str(gpt2_dir), out=str(tmp_path / "py"), n=0)
    assert str(e.value) == "n=0: must be >= 1"
    with pytest.raises(SystemExit) as ex:
        cli_main(["run", a.name, "--model", str(gpt2_dir), "--out", str(tmp_path / "cli"), "--n", "0"])
    assert ex.value.code == 2 and capsys.readouterr().err.strip() == "lamina: error: --n 0: must be >= 1"
    assert not (tmp_path / "py").exists() and not (tmp_path / "cli").exists()


def test_a_typed_list_option_gives_one_resume_key_from_cli_and_python(gpt2_dir, tmp_path, capsys):
    a = analysis("fixed")
    edges = sorted(int(v) for v in np.random.default_rng().choice(50, size=4, replace=False))
    py = lamina.run(
        a.name, model=str(gpt2_dir), out=str(tmp_path / "py"), edges=list(edges), progress=False, figures=False
    )
    cli_main(
        [
            "run",
            a.name,
            "--model",
            str(gpt2_dir),
            "--out",
            str(tmp_path / "cli"),
            "--no-progress",
            "--no-figures",
            "--edges",
            ",".join(map(str, edges)),
        ]
    )
    capsys.readouterr()
    cli = lamina.open_run(str(tmp_path / "cli"))
    assert py.attrs["key"] == cli.attrs["key"] and f'"edges": {edges}' in py.attrs["key"]
    with pytest.raises(SystemExit) as ex:
        cli_main(["run", a.name, "--model", str(gpt2_dir), "--out", str(tmp_path / "bad"), "--edges", "1,x"])
    assert ex.value.code == 2 and "comma-separated list of ints" in capsys.readouterr().err


def test_a_plugin_s_captions_are_in_its_report(gpt2_dir, tmp_path):
    a = analysis("figure")
    run = lamina.run(a.name, model=str(gpt2_dir), out=str(tmp_path / "run"), progress=False)
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert run.status == "complete" and "Mean of the residual stream" in page
    assert "The figure caption: mean over tokens." in page and "does not describe it" not in page
