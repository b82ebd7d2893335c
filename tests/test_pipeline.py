"""A real Snakemake run of the preprocessing chain on the tiny demo config: synthetic data to binarized
corpora for every system, with the vocabulary extension's N flowing on by itself."""
import json

import numpy as np
import pytest

from relm.data.corpus import Corpus
from relm.text.vocab import read_vocab_lines
from workflow_utils import snakemake, tiny_config, write_config

TARGETS = [
    "data/hx/bin-hmr/train.hx.json",
    "data/lx-hx/bin-relm/train.lx.json",
    "data/lx-hx/bin-relm/valid.hx.json",
    "data/lx-hx/bin-relm/test.lx.json",
    "data/lx-hx/bin-xlm/train.hx.json",
    "data/lx-hx/bin-xlm/valid.lx.json",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("pipeline")
    cfg = write_config(wd / "tiny.yaml", tiny_config())
    proc = snakemake(wd, "--cores", "2", *TARGETS, config=cfg)
    return wd, cfg, proc


def test_extension_n_flows_on(run):
    wd, _, _ = run
    side = json.loads((wd / "data/lx-hx/vocab.lx-hx-ext.json").read_text())
    ext = read_vocab_lines(wd / side["ext_vocab"])
    hmr = read_vocab_lines(wd / "data/hx/vocab.hx")
    assert side["ext_vocab"].endswith(f"vocab.lx-hx-ext-by-{side['n_new']}")
    assert side["n_new"] == len(ext) - len(hmr) > 0
    assert [t for t, _, _ in ext[: len(hmr)]] == [t for t, _, _ in hmr]  # HMR ids kept
    # The RE-LM corpora were binarized with the extended dictionary, whose size the sidecar states.
    lmr = Corpus(wd / "data/lx-hx/bin-relm/train.lx.json")
    assert lmr.meta["n_words"] == side["n_words_ext"] == 14 + len(ext)
    assert int(np.asarray(lmr.tok).max()) >= side["n_words_hmr"]  # new LMR tokens are used


def test_hmr_side_of_relm_stays_in_hmr_ids(run):
    wd, _, _ = run
    side = json.loads((wd / "data/lx-hx/vocab.lx-hx-ext.json").read_text())
    valid_hmr = Corpus(wd / "data/lx-hx/bin-relm/valid.hx.json")  # HMR codes, extended dictionary
    train_hmr = Corpus(wd / "data/hx/bin-hmr/train.hx.json")  # reused by RE-LM as it is
    assert train_hmr.meta["n_words"] == side["n_words_hmr"]
    assert int(np.asarray(train_hmr.tok).max()) < side["n_words_hmr"]
    assert valid_hmr.meta["n_words"] == side["n_words_ext"]


def test_xlm_uses_joint_vocabulary(run):
    wd, _, _ = run
    a = Corpus(wd / "data/lx-hx/bin-xlm/train.hx.json")
    b = Corpus(wd / "data/lx-hx/bin-xlm/valid.lx.json")
    assert a.meta["vocab"] == b.meta["vocab"] == "data/lx-hx/vocab.joint"
    assert len(b) == 60 and a.meta["n_unk"] == 0


def test_every_rule_logged(run):
    wd, _, _ = run
    logs = {p.parent.name for p in (wd / "logs").rglob("*.log")}
    assert {"synth", "fetch", "clean", "tokenize", "bpe_learn_hmr", "bpe_learn_joint", "bpe_apply", "vocab_hmr",
            "vocab_lmr", "vocab_joint", "extend_vocab", "binarize"} <= logs


def test_second_run_has_nothing_to_do(run):
    wd, cfg, _ = run
    proc = snakemake(wd, "--cores", "2", *TARGETS, config=cfg)
    assert "Nothing to be done" in proc.stdout + proc.stderr
