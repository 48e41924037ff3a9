"""The untrained control of any model (``--weights random``): the same architecture from the source's own config,
the same tokenizer, seeded - for a checkpoint folder, a hub id in the HuggingFace cache and a GGUF file; and no
silent tokenizer fallback (a checkpoint folder without tokenizer files is refused unless one is named)."""

from __future__ import annotations

import json

import pytest
import torch

from lamina.analyses.cli import main as cli_main
from lamina.analyses.textfiles import stimulus_path
from lamina.engine.errors import InputError
from lamina.engine.models import load_model
from lamina.engine.reader import open_run

from .conftest import make_checkpoint
from .families import make_family_checkpoint
from .test_models import _checkpoint_files, _put_snapshot
from .tokenizers_offline import sentencepiece_tokenizer

CORPUS = stimulus_path("corpus.txt").read_text(encoding="utf-8")[:6000]


def _ids(tok):
    return tok(CORPUS, add_special_tokens=False)["input_ids"]


def _params(m):
    return dict(m.bridge.original_model.named_parameters())


def _assert_control(trained, control, own_tok, seed):
    """Same architecture and tokenizer as ``trained``, other (seeded) weights."""
    assert control.weights == "random" and control.seed == seed
    assert (control.n_layers, control.d_model, control.info.n_kv_heads, control.info.vocab) == \
        (trained.n_layers, trained.d_model, trained.info.n_kv_heads, trained.info.vocab)
    assert _ids(control.tokenizer) == _ids(trained.tokenizer) == _ids(own_tok)
    pc, pt = control.provenance(), trained.provenance()
    assert pc["tokenizer_sha256"] == pt["tokenizer_sha256"] and pc["tokenizer_vocab_size"] == len(own_tok)
    a, b = _params(control), _params(trained)
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    q = next(k for k in a if "layers.0." in k and "q_proj" in k and k.endswith("weight"))
    assert not torch.equal(a[q], b[q])


def test_control_of_a_checkpoint_folder(tmp_path):
    tok = sentencepiece_tokenizer()
    folder = make_family_checkpoint(tmp_path / "sp-llama", "llama", tokenizer=tok, vocab_size=len(tok), seed=1)
    trained = load_model(str(folder))
    control = load_model(str(folder), weights="random", seed=7)
    _assert_control(trained, control, tok, 7)
    again = load_model(str(folder), weights="random", seed=7)
    assert all(torch.equal(v, _params(again)[k]) for k, v in _params(control).items())
    # the two failing commands: --weights random --model FOLDER, and with --config FOLDER as well
    for extra in ([], ["--config", str(folder)]):
        out = tmp_path / f"rsa-control{len(extra)}"
        cli_main(["run", "rsa", "--model", str(folder), "--weights", "random", "--seed", "7", "--permutations", "20",
                  "--out", str(out), "--no-figures", "--no-progress", *extra])
        run = open_run(out)
        assert run.complete and run.attrs["weights"] == "random"
        assert run.attrs["model"]["tokenizer_sha256"] == trained.provenance()["tokenizer_sha256"]


def test_control_of_a_cached_hub_id(tmp_path, monkeypatch):
    tok = sentencepiece_tokenizer()
    src = make_family_checkpoint(tmp_path / "src", "llama", tokenizer=tok, vocab_size=len(tok), seed=2)
    hub = tmp_path / "hf-home" / "hub"
    _put_snapshot(hub, "someorg/sp-llama", "d" * 40, _checkpoint_files(src), main=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    trained = load_model("someorg/sp-llama")
    control = load_model("someorg/sp-llama", weights="random", seed=3)
    assert trained.info.revision == control.info.revision == "d" * 40
    _assert_control(trained, control, tok, 3)


def test_control_of_the_smollm2_gguf():
    from .tokenizers_offline import smollm2_tokenizer

    own = smollm2_tokenizer()  # plain transformers reading the GGUF
    trained = load_model("smollm2-135m", device="cpu")
    control = load_model("smollm2-135m", weights="random", seed=0, device="cpu")
    _assert_control(trained, control, own, 0)
    assert control.provenance()["gguf"]["sha256"] == trained.provenance()["gguf"]["sha256"]
    assert "warning" in control.provenance() and "warning" not in trained.provenance()


# ---- no silent tokenizer fallback ----------------------------------------------------------------


def _without_tokenizer(folder):
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    return folder


def test_checkpoint_without_tokenizer_files_is_refused(tmp_path, capsys):
    folder = _without_tokenizer(make_checkpoint(tmp_path / "bare", "gpt2", n_layers=2, d_model=32, n_heads=2))
    for weights in ("pretrained", "random"):
        out = tmp_path / f"never-{weights}"
        with pytest.raises(SystemExit) as e:
            cli_main(["run", "qkv", "--model", str(folder), "--weights", weights, "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "has no tokenizer files" in err and "--tokenizer gpt2" in err
        assert len(err.strip().splitlines()) == 1 and not out.exists()
    with pytest.raises(InputError, match="has no tokenizer files"):
        load_model(str(folder))


def test_a_named_tokenizer_is_used_and_shown(tmp_path, capsys):
    folder = _without_tokenizer(make_checkpoint(tmp_path / "bare", "gpt2", n_layers=2, d_model=32, n_heads=2))
    out = tmp_path / "run"
    cli_main(["run", "rsa", "--model", str(folder), "--tokenizer", "gpt2", "--permutations", "20", "--out", str(out),
              "--no-progress"])
    model = open_run(out).attrs["model"]
    assert model["tokenizer"] == "gpt2-bpe (bundled)" and model["tokenizer_vocab_size"] == 50257
    capsys.readouterr()
    cli_main(["info", str(out)])
    info = capsys.readouterr().out
    assert "tokenizer gpt2-bpe (bundled) (byte-level BPE, 50257 tokens, sha256 " in info
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "byte-level BPE, 50257 tokens, sha256 " + model["tokenizer_sha256"][:12] in html
    # a folder of tokenizer files, through the Python front door
    tok_dir = tmp_path / "sp-tok"
    sentencepiece_tokenizer().save_pretrained(str(tok_dir))
    big = _without_tokenizer(make_family_checkpoint(tmp_path / "llama", "llama", vocab_size=3000, seed=0))
    m = load_model(str(big), tokenizer=str(tok_dir))
    assert m.provenance()["tokenizer"] == "--tokenizer" and m.provenance()["tokenizer_path"] == str(tok_dir.resolve())
    assert _ids(m.tokenizer) == _ids(sentencepiece_tokenizer())
    with pytest.raises(InputError, match="neither 'gpt2'"):
        load_model(str(big), tokenizer=str(tmp_path / "nowhere"))


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused(tmp_path, capsys):
    """GPT-2's tokenizer makes ids up to 50256; an embedding of 1000 rows would be indexed past its end."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lamina.engine.tokenizer import gpt2_tokenizer

    folder = tmp_path / "small-vocab"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=1000)).save_pretrained(
        str(folder))
    gpt2_tokenizer().save_pretrained(str(folder))
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as e:
        cli_main(["run", "qkv", "--model", str(folder), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "embedding of 1000 rows" in err and "ids up to 50256" in err and not out.exists()
    with pytest.raises(InputError, match="embedding of 1000 rows"):
        load_model(str(_without_tokenizer(folder)), tokenizer="gpt2")


# ---- models that are not causal LMs (refused from the config, before any weights load) -----------------


@pytest.fixture
def no_weights(monkeypatch):
    import lamina.analyses.runner as runner

    def refuse(*a, **k):
        raise AssertionError("weights were loaded before the model was refused")

    monkeypatch.setattr(runner, "load_model", refuse)


def _refused(args, tmp_path, capsys, *needles):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as e:
        cli_main(["run", "qkv", *args, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and not out.exists(), err
    for n in needles:
        assert n in err, err
    return err


def test_masked_lm_checkpoint_is_refused(tmp_path, capsys, no_weights):
    from transformers import BertConfig, BertForMaskedLM

    from lamina.engine.tokenizer import gpt2_tokenizer

    folder = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=50257, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(str(folder))
    gpt2_tokenizer().save_pretrained(str(folder))
    _refused(["--model", str(folder)], tmp_path, capsys, "BertForMaskedLM", "bidirectional masked language model")
    _refused(["--weights", "random", "--config", str(folder / "config.json")], tmp_path, capsys,
             "bidirectional masked language model")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("architectures")  # a BERT config that names no class: its model_type alone
    (tmp_path / "bert-cfg.json").write_text(json.dumps(cfg))
    _refused(["--model", "my-bert", "--weights", "random", "--config", str(tmp_path / "bert-cfg.json")], tmp_path,
             capsys, "model_type 'bert'")


def test_encoder_decoder_and_custom_code_are_refused(tmp_path, capsys, no_weights):
    from transformers import T5Config

    (tmp_path / "t5.json").write_text(T5Config(d_model=32, num_layers=2).to_json_string())
    _refused(["--model", "my-t5", "--weights", "random", "--config", str(tmp_path / "t5.json")], tmp_path, capsys,
             "encoder-decoder")
    folder = make_checkpoint(tmp_path / "custom", "gpt2", n_layers=2, d_model=32, n_heads=2)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (folder / "config.json").write_text(json.dumps(cfg))
    _refused(["--model", str(folder)], tmp_path, capsys, "auto_map", "trust_remote_code")
