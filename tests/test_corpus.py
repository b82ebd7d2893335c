"""Binarized corpora: round trip, unknown words, dtype rule, memory mapping, damaged files."""
import json
import re

import numpy as np
import pytest

import relm.data.corpus as corpus_module
from relm.cli import main
from relm.data.corpus import Corpus, binarize
from relm.data.dictionary import Dictionary
from relm.tokens import UNK
from relm.errors import InputError
from relm.text.vocab import count_vocab, extend_vocab

TEXT = "the cat@@ s sat\n\nна ма@@ са\nthe the\n"


@pytest.fixture
def corpus(tmp_path):
    text, vocab = tmp_path / "train.hx", tmp_path / "vocab.hx"
    text.write_text(TEXT)
    count_vocab([text], vocab, log=lambda *a: None)
    logged = []
    meta = binarize(text, vocab, tmp_path / "bin" / "train.hx.json", "hx", log=logged.append)
    return tmp_path, meta, logged


def test_round_trip(corpus):
    tmp_path, meta, _ = corpus
    c = Corpus(tmp_path / "bin" / "train.hx.json")
    dico = Dictionary.read_vocab(tmp_path / "vocab.hx")
    lines = TEXT.split("\n")[:-1]
    assert len(c) == meta["n_sentences"] == 4
    assert [dico.decode(c[i]) for i in range(len(c))] == lines  # the empty line stays an empty sentence
    assert c.lengths.tolist() == [4, 0, 3, 2] and meta["n_tokens"] == 9
    assert dico.decode(c[-1]) == "the the"
    assert c.meta == meta == json.loads((tmp_path / "bin" / "train.hx.json").read_text())
    assert (meta["lang"], meta["n_words"], meta["n_unk"]) == ("hx", len(dico), 0)
    assert isinstance(c.tok, np.memmap) and isinstance(c.off, np.memmap)  # not read into RAM
    assert c.tok.dtype == np.uint16 and c.off.dtype == np.int64
    with pytest.raises(IndexError):
        c[4]


def test_unknown_words_counted_and_logged(corpus):
    tmp_path = corpus[0]
    other = tmp_path / "valid.hx"
    other.write_text("the dog sat\nна dog <unk> cat\n")
    logged = []
    meta = binarize(other, tmp_path / "vocab.hx", tmp_path / "bin" / "valid.hx.json", "hx", log=logged.append)
    c = Corpus(tmp_path / "bin" / "valid.hx.json")
    assert meta["n_unk"] == 4
    assert c[1].tolist()[1:3] == [UNK, UNK]
    assert any("dog (2)" in m and "cat (1)" in m and "<unk> (1)" in m for m in logged)


@pytest.mark.parametrize("n_tokens, dtype", [(65536 - 15, np.uint16), (65536 - 14, np.int32)])
def test_dtype_rule(tmp_path, n_tokens, dtype):
    vocab, text = tmp_path / "vocab", tmp_path / "text"
    vocab.write_text("".join(f"w{i} 1\n" for i in range(n_tokens)))
    text.write_text(f"w0 w{n_tokens - 1}\n")
    meta = binarize(text, vocab, tmp_path / "c.json", "hx", log=lambda *a: None)
    c = Corpus(tmp_path / "c.json")
    assert meta["n_words"] == n_tokens + 14
    assert c.tok.dtype == dtype and c[0].tolist() == [14, n_tokens + 13]


def test_hmr_corpus_valid_under_extended_dictionary(corpus):
    """RE-LM: a corpus binarized with the HMR vocab keeps its meaning under the extended dictionary."""
    tmp_path, _, _ = corpus
    lmr = tmp_path / "vocab.lx"
    lmr.write_text("на 5\nnew 4\nthe 1\n")
    side = extend_vocab(tmp_path / "vocab.hx", lmr, tmp_path, "lx", "hx", log=lambda *a: None)
    hmr_dico, ext_dico = Dictionary.read_vocab(tmp_path / "vocab.hx"), Dictionary.read_vocab(side["ext_vocab"])
    hmr_dico.check_prefix_of(ext_dico)
    c = Corpus(tmp_path / "bin" / "train.hx.json")
    assert [ext_dico.decode(c[i]) for i in range(len(c))] == TEXT.split("\n")[:-1]


@pytest.mark.parametrize("damage, message", [
    ("missing_tok", r"train\.hx\.tok\.npy is missing"),
    ("missing_off", r"train\.hx\.off\.npy is missing"),
    ("short_off", r"inconsistent: train\.hx\.off\.npy has 3 offsets, expected n_sentences \+ 1 = 5"),
    ("wrong_n_tokens", r"inconsistent: .*has 14 ids, expected n_tokens \+ n_sentences \+ 1 = 15"),
    ("bad_last_offset", r"offsets run from 0 to 8, expected 0 to 13"),
])
def test_damaged_corpus_errors(corpus, damage, message):
    tmp_path, meta, _ = corpus
    j = tmp_path / "bin" / "train.hx.json"
    tok, off = tmp_path / "bin" / "train.hx.tok.npy", tmp_path / "bin" / "train.hx.off.npy"
    if damage == "missing_tok":
        tok.unlink()
    elif damage == "missing_off":
        off.unlink()
    elif damage == "short_off":
        np.save(off, np.load(off)[:3])
    elif damage == "wrong_n_tokens":
        j.write_text(json.dumps({**meta, "n_tokens": 10}))
    elif damage == "bad_last_offset":
        o = np.load(off)
        o[-1] = 8
        np.save(off, o)
    with pytest.raises(InputError, match=message):
        Corpus(j)


def test_binarize_writes_atomically(tmp_path):
    text, vocab = tmp_path / "t", tmp_path / "v"
    text.write_bytes(b"a b\n\xff\n")
    vocab.write_text("a 1\nb 1\n")
    with pytest.raises(InputError, match=r"t:2: invalid UTF-8"):
        binarize(text, vocab, tmp_path / "c.json", "hx", log=lambda *a: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t", "v"]


def test_text_given_as_vocabulary_fails(tmp_path):
    text = tmp_path / "train.hx"
    text.write_text("the cat sat on the mat\nthe dog sat there too\n")
    with pytest.raises(InputError, match=rf"{re.escape(str(text))}:1: 6 fields instead of 'token count'.*not a "
                                         "vocabulary file"):
        binarize(text, text, tmp_path / "c.json", "hx", log=lambda *a: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.hx"]


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank"])
def test_empty_text_fails(corpus, content):
    tmp_path = corpus[0]
    (tmp_path / "empty.hx").write_text(content)
    with pytest.raises(InputError, match=r"empty\.hx has no tokens .*nothing to binarize"):
        binarize(tmp_path / "empty.hx", tmp_path / "vocab.hx", tmp_path / "e" / "e.json", "hx", log=lambda *a: None)
    assert not (tmp_path / "e").exists()


def test_wrong_vocabulary_by_unknown_rate(corpus, monkeypatch):
    tmp_path = corpus[0]
    other = tmp_path / "other.lx"
    other.write_text("ово е друг јазик\nсосема друг\n" * 5)
    out = tmp_path / "o" / "other.lx.json"
    with pytest.raises(InputError, match=r"other\.lx: 30 of 30 tokens \(100%\) are not in the vocabulary .*vocab\.hx "
                                         r"\(e\.g\. друг, ово, е, јазик, сосема\), more than the limit 50%"):
        binarize(other, tmp_path / "vocab.hx", out, "lx", log=lambda *a: None, max_unk_rate=0.5)
    assert not out.parent.exists()
    meta = binarize(other, tmp_path / "vocab.hx", out, "lx", log=lambda *a: None)  # no limit: as before
    assert meta["n_unk"] == meta["n_tokens"] == 30
    # a legit text with a few unknown words passes the limit
    ok = tmp_path / "ok.hx"
    ok.write_text("the cat@@ s sat\nthe dog sat\n")
    assert binarize(ok, tmp_path / "vocab.hx", tmp_path / "ok.json", "hx", log=lambda *a: None,
                    max_unk_rate=0.5)["n_unk"] == 1
    # checked early: a text that starts unknown fails before it is read to the end
    monkeypatch.setattr(corpus_module, "UNK_CHECK_TOKENS", 8)
    mixed = tmp_path / "mixed.hx"
    mixed.write_text("друг друг друг друг\nдруг друг друг друг\n" + "the sat\n" * 20)
    with pytest.raises(InputError, match=r"mixed\.hx: 8 of the first 8 tokens \(100%\)"):
        binarize(mixed, tmp_path / "vocab.hx", tmp_path / "m.json", "hx", log=lambda *a: None, max_unk_rate=0.5)


def test_binarize_cli_limits_unknowns(corpus):
    tmp_path = corpus[0]
    (tmp_path / "x.lx").write_text("ово е друг јазик\n")
    args = ["binarize", "--input", str(tmp_path / "x.lx"), "--vocab", str(tmp_path / "vocab.hx"),
            "--output", str(tmp_path / "x.json"), "--lang", "lx"]
    with pytest.raises(SystemExit, match=r"^relm binarize: error: .*x\.lx: 4 of 4 tokens \(100%\) .*limit 50%"):
        main(args)
    assert not (tmp_path / "x.json").exists()
    main(args + ["--max-unk-rate", "1"])
    assert json.loads((tmp_path / "x.json").read_text())["n_unk"] == 4
