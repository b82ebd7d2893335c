"""Starting rows of the new tokens of a vocabulary extension (extension.init: random, mean, subword, aligned)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from relm.config import AlignedConfig, MLMConfig, from_dict
from relm.data.corpus import binarize
from relm.data.dictionary import Dictionary
from relm.errors import CheckpointError, ConfigError
from relm.model.checkpoint import save_model
from relm.model.newrows import align, normalize, precision_at_1, read_rows, subword_pieces, subword_rows, write_rows
from relm.model.transformer import TransformerModel
from relm.text.bpe import BPE, learn_codes
from relm.text.vocab import count_vocab, extend_vocab
from relm.tokens import N_SPECIAL
from relm.train.mlm import load_init, train_mlm

QUIET = lambda *a: None
MODEL = {"dim": 16, "n_layers": 1, "n_heads": 2, "dropout": 0.0, "attention_dropout": 0.0, "max_positions": 64}
INITS = ["random", "mean", "subword", "aligned"]


def test_align_recovers_a_rotation_from_identical_strings():
    """Two embedding sets related by a random rotation (plus noise); only 30 of 400 tokens are spelled alike. The
    map learned from those and refined on mutual nearest neighbours is the rotation, and translates the others."""
    rng = np.random.default_rng(0)
    x = normalize(rng.normal(size=(400, 20)))
    q, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    y = x @ q + 0.01 * rng.normal(size=x.shape)
    src_words = [f"w{i}" if i < 30 else f"l{i}" for i in range(400)]
    tgt_words = [f"w{i}" if i < 30 else f"h{i}" for i in range(400)]
    tgt_id = {w: i for i, w in enumerate(tgt_words)}
    seed = [(i, tgt_id[w]) for i, w in enumerate(src_words) if w in tgt_id]
    assert len(seed) == 30
    w = align(x, y, seed, iters=3, top=400)
    assert np.abs(w - q).max() < 0.01
    assert precision_at_1(x, y, w, [(i, i) for i in range(30, 400)]) == 1.0
    assert precision_at_1(x, y, np.eye(20), [(i, i) for i in range(30, 400)]) < 0.2  # without the map


@pytest.fixture(scope="module")
def codes(tmp_path_factory):
    d = tmp_path_factory.mktemp("codes")
    (d / "codes").write_text("#version: 0.2\nl o\nlo w\ne r</w>\n")
    return d / "codes"


@pytest.mark.parametrize("token, known, pieces", [
    ("low@@", {"low@@", "er"}, ["low@@"]),  # in the HMR vocabulary: itself
    ("lower", {"low@@", "er"}, ["low@@", "er"]),  # the HMR codes' segmentation
    ("lower@@", {"low@@", "er", "e@@", "r@@"}, ["low@@", "e@@", "r@@"]),  # inside a word; er@@ unknown: characters
    ("lowxr", {"low@@", "x@@", "r"}, ["low@@", "x@@", "r"]),
    ("qq", {"low@@"}, []),  # nothing known
])
def test_subword_pieces(codes, token, known, pieces):
    assert subword_pieces(token, BPE(codes, known), known) == pieces


def test_subword_rows_average_the_pieces_and_fall_back_to_the_mean(codes):
    words = [f"<sp{i}>" for i in range(N_SPECIAL)] + ["low@@", "er", "e@@", "r@@"]
    emb = np.arange(len(words) * 2, dtype=np.float32).reshape(-1, 2)
    rows, stats = subword_rows(emb, words, ["lower", "er", "qq"], codes)
    np.testing.assert_allclose(rows[0], emb[[N_SPECIAL, N_SPECIAL + 1]].mean(0))
    np.testing.assert_allclose(rows[1], emb[N_SPECIAL + 1])  # an HMR token gives its own row
    np.testing.assert_allclose(rows[2], emb[N_SPECIAL:].mean(0))
    assert stats["unplaced"] == 1


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    """An HMR checkpoint (random weights), HMR codes, the extended vocabulary and its corpora. The two languages
    share the tokens s0..s19 (identical strings) and have 40 own ones each, in sentences of consecutive ids."""
    d = tmp_path_factory.mktemp("ext")
    rng = np.random.default_rng(0)
    for lg in ("hx", "lx"):
        vocab = [f"s{k}" for k in range(20)] + [f"{lg}{k}" for k in range(40)]
        lines = []
        for _ in range(600):
            s = rng.integers(60)
            lines.append(" ".join(vocab[(s + k) % 60] for k in range(rng.integers(4, 12))))
        _write(d / f"train.{lg}", lines)
        _write(d / f"valid.{lg}", lines[:20])
    learn_codes([d / "train.hx"], d / "codes.hx", 20)
    count_vocab([d / "train.hx"], d / "vocab.hx", log=QUIET)
    count_vocab([d / "train.lx"], d / "vocab.lx", log=QUIET)
    side = extend_vocab(d / "vocab.hx", d / "vocab.lx", d, lmr="lx", hmr="hx", log=QUIET)
    hmr = Dictionary.read_vocab(d / "vocab.hx")
    cfg = from_dict(MLMConfig, {"model": MODEL})
    torch.manual_seed(0)
    save_model(d / "hmr.pt", "mlm", {"model": TransformerModel(cfg.model, len(hmr), 1, False)}, cfg.model, ["hx"],
               hmr.words, hmr.counts, {})
    return {"dir": d, "side": side, "sidecar": str(d / "vocab.lx-hx-ext.json"), "vocab": side["ext_vocab"],
            "n_hmr": len(hmr)}


def _init_rows(ext, method, out):
    d = ext["dir"]
    settings = {"aligned": {"dim": 8, "min_count": 1, "epochs": 2, "refine_iters": 1}}
    cmd = [sys.executable, "-m", "relm.cli", "vocab", "init-rows", "--method", method, "--checkpoint",
           str(d / "hmr.pt"), "--extension", ext["sidecar"], "--vocab", ext["vocab"], "--codes", str(d / "codes.hx"),
           "--hmr-text", str(d / "train.hx"), "--lmr-text", str(d / "train.lx"), "--settings", json.dumps(settings),
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("init", INITS)
def test_every_init_keeps_the_pretrained_rows(ext, tmp_path, init):
    """Rows 0..V-1 (and their output bias) stay the pretrained ones; the new rows are the method's, recorded in the
    rows' sidecar; random ones are the original's U(-1/dim, 1/dim)."""
    rows_path = None
    if init != "random":
        rows_path = tmp_path / f"{init}.npy"
        log = _init_rows(ext, init, rows_path)
        info = json.loads(rows_path.with_suffix(".json").read_text())
        assert info["method"] == init and info["n_new"] == ext["side"]["n_new"]
        if init == "aligned":
            assert "precision@1 on" in log and 0 <= info["precision"] <= 1 and info["seed_pairs"] > 0
    cfg = from_dict(MLMConfig, {"model": MODEL, "langs": ["hx", "lx"], "extension_init": init})
    dico = Dictionary.read_vocab(ext["vocab"])
    model = TransformerModel(cfg.model, len(dico), 2, False)
    load_init(model, str(ext["dir"] / "hmr.pt"), dico, ["hx", "lx"], cfg, ext["sidecar"], QUIET,
              str(rows_path) if rows_path else None)
    pre = torch.load(ext["dir"] / "hmr.pt", weights_only=True)["model"]
    v = ext["n_hmr"]
    emb = model.embeddings.weight.detach()
    assert torch.equal(emb[:v], pre["embeddings.weight"])
    assert torch.equal(model.pred_layer.proj.bias.detach()[:v], pre["pred_layer.proj.bias"])
    assert torch.count_nonzero(model.pred_layer.proj.bias.detach()[v:]) == 0
    new = emb[v:]
    if init == "random":
        assert new.abs().max() <= 1 / MODEL["dim"]
    else:
        assert torch.equal(new, torch.from_numpy(np.load(rows_path)))
    if init == "mean":
        assert torch.allclose(new, pre["embeddings.weight"][N_SPECIAL:].mean(0).expand_as(new), atol=1e-6)


def test_the_run_records_its_init_and_refuses_missing_or_foreign_rows(ext, tmp_path):
    d = ext["dir"]
    dico = Dictionary.read_vocab(ext["vocab"])
    train, valid = {}, {}
    for lg in ("hx", "lx"):
        for split, out in (("train", train), ("valid", valid)):
            binarize(d / f"{split}.{lg}", ext["vocab"], tmp_path / f"{split}.{lg}.json", lg, log=QUIET)
            out[lg] = str(tmp_path / f"{split}.{lg}.json")
    rows = tmp_path / "mean.npy"
    _init_rows(ext, "mean", rows)
    settings = {"model": MODEL, "langs": ["hx", "lx"], "bptt": 16, "batch_size": 4, "extension_init": "mean",
                "run": {"max_epochs": 1, "epoch_size": 8, "threads": 1}}
    common = dict(vocab=ext["vocab"], train=train, valid=valid, init=str(d / "hmr.pt"), extension=ext["sidecar"],
                  log=QUIET)
    train_mlm(from_dict(MLMConfig, settings), str(tmp_path / "run"), ext_rows=str(rows), **common)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["extension_init"] == "mean"
    assert "ext_rows" in json.loads((tmp_path / "run" / "inputs.json").read_text())
    with pytest.raises(ConfigError, match=r"extension_init .mean. needs .* \(--ext-rows"):
        train_mlm(from_dict(MLMConfig, settings), str(tmp_path / "run2"), **common)
    with pytest.raises(CheckpointError, match="rows made by extension.init 'mean', the run asks for 'subword'"):
        read_rows(rows, "subword", ext["side"]["n_new"], MODEL["dim"])
    with pytest.raises(CheckpointError, match=r"shape \(\d+, 16\), the extension needs \(3, 16\)"):
        read_rows(rows, "mean", 3, MODEL["dim"])
    write_rows(tmp_path / "other.npy", np.zeros((2, 2)), {"method": "mean"})
    (tmp_path / "other.json").replace(rows.with_suffix(".json"))  # a sidecar of other rows
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        read_rows(rows, "mean", ext["side"]["n_new"], MODEL["dim"])
    assert len(dico) == ext["n_hmr"] + ext["side"]["n_new"]


def test_aligned_rows_are_deterministic(ext, tmp_path):
    """The same inputs and seed give the same rows (one skip-gram worker), in two processes."""
    _init_rows(ext, "aligned", tmp_path / "a.npy")
    _init_rows(ext, "aligned", tmp_path / "b.npy")
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_aligned_settings_are_checked():
    from relm.config import ExtensionConfig, check

    with pytest.raises(ConfigError, match="'extension.aligned.heldout' must be in"):
        check(from_dict(ExtensionConfig, {"init": "aligned", "aligned": {"heldout": 1.0}}), "extension.")
    assert AlignedConfig().dim == 100
