"""Vocabulary counting, RE-LM vocabulary extension and the XLM-style Dictionary."""
import json
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relm.data.dictionary import Dictionary
from relm.tokens import N_SPECIAL, SPECIAL_WORDS, UNK
from relm.errors import InputError
from relm.files import sha256_file
from relm.text.vocab import count_vocab, extend_vocab

quiet = lambda *a: None  # noqa: E731


def test_count_vocab_getvocab_order(tmp_path):
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "vocab"
    a.write_text("b a é\nB  a\t x z\n")  # double space = no empty token; a tab is part of a token
    b.write_text("z é\nZ b\n")
    assert count_vocab([a, b], out, log=quiet) == 8
    # count desc, then bytes asc: "B" < "Z" < "a\t" < "b" < "z" < "é" (0xc3) ; "x" only once
    assert out.read_text().split("\n") == [
        "b 2", "z 2", "é 2", "B 1", "Z 1", "a 1", "a\t 1", "x 1", "",
    ]


def test_count_vocab_counts_every_token(tmp_path):
    text = tmp_path / "t"
    words = ["w%d" % (i % 37) for i in range(1000)] + ["rare"]
    text.write_text(" ".join(words[:500]) + "\n" + " ".join(words[500:]) + "\n")
    count_vocab([text], tmp_path / "v", log=quiet)
    rows = [line.split() for line in (tmp_path / "v").read_text().splitlines()]
    assert {w: int(c) for w, c in rows} == Counter(words)
    assert [int(c) for _, c in rows] == sorted((int(c) for _, c in rows), reverse=True)


def test_extend_vocab_example(tmp_path):
    hmr, lmr = tmp_path / "vocab.hx", tmp_path / "vocab.lx"
    hmr.write_text("the 10\n, 7\nbad line here\nab@@ 3\n")
    lmr.write_text("на 9\n, 8\nСко@@ 4\nab@@ 2\nпје 2\n")
    (tmp_path / "vocab.lx-hx-ext-by-99").write_text("stale\n")
    (tmp_path / "vocab.lx-hx-ext-by-99.keep").write_text("not ours\n")
    side = extend_vocab(hmr, lmr, tmp_path, "lx", "hx", log=quiet)
    ext = tmp_path / "vocab.lx-hx-ext-by-3"
    assert ext.read_text() == "the 19\n, 16\nab@@ 12\nна 9\nСко@@ 4\nпје 2\n"
    assert not (tmp_path / "vocab.lx-hx-ext-by-99").exists() and (tmp_path / "vocab.lx-hx-ext-by-99.keep").exists()
    assert side == json.loads((tmp_path / "vocab.lx-hx-ext.json").read_text())
    assert side == {
        "n_new": 3, "ext_vocab": str(ext), "hmr_vocab": str(hmr), "lmr_vocab": str(lmr),
        "hmr_tokens": 3, "lmr_tokens": 5, "ext_tokens": 6, "n_words_hmr": 17, "n_words_ext": 20,
        "hmr_vocab_sha256": sha256_file(hmr), "lmr_vocab_sha256": sha256_file(lmr),
    }
    assert len(Dictionary.read_vocab(ext)) == side["n_words_ext"]


def test_extend_vocab_rejects_duplicates(tmp_path):
    hmr, lmr = tmp_path / "vocab.hx", tmp_path / "vocab.lx"
    hmr.write_text("a 3\nb 2\na 1\n")
    lmr.write_text("c 1\n")
    with pytest.raises(InputError, match=r"vocab\.hx: token 'a' occurs twice"):
        extend_vocab(hmr, lmr, tmp_path, "lx", "hx", log=quiet)


def _write_vocab(path: Path, counts: dict) -> None:
    rows = sorted(counts.items(), key=lambda tc: (-tc[1], tc[0].encode()))
    path.write_text("".join(f"{t} {c}\n" for t, c in rows), encoding="utf-8")


tokens = st.text(alphabet="abcабвг@.,", min_size=1, max_size=4)
vocabs = st.dictionaries(tokens, st.integers(1, 50), min_size=1, max_size=30)  # count_vocab writes no empty vocab


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hmr_counts=vocabs, lmr_counts=vocabs)
def test_extend_vocab_properties(hmr_counts, lmr_counts):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        hmr, lmr = d / "vocab.hx", d / "lmr" / "vocab.lx"
        lmr.parent.mkdir()
        _write_vocab(hmr, hmr_counts)
        _write_vocab(lmr, lmr_counts)
        side = extend_vocab(hmr, lmr, d / "out", "lx", "hx", log=quiet)
        ext = Path(side["ext_vocab"])
        first = (ext.read_bytes(), (d / "out" / "vocab.lx-hx-ext.json").read_bytes())
        hmr_tokens = [line.split()[0] for line in hmr.read_text().splitlines()]
        ext_tokens = [line.split()[0] for line in ext.read_text().splitlines()]
        missing = [t for t in (line.split()[0] for line in lmr.read_text().splitlines()) if t not in hmr_counts]

        assert ext_tokens[: len(hmr_tokens)] == hmr_tokens  # HMR tokens first, same order
        assert ext_tokens[len(hmr_tokens):] == missing  # then the missing LMR tokens in LMR order
        assert side["n_new"] == len(missing) == len(set(lmr_counts) - set(hmr_counts))
        assert ext.name == f"vocab.lx-hx-ext-by-{len(missing)}"

        hmr_dico, ext_dico = Dictionary.read_vocab(hmr), Dictionary.read_vocab(ext)  # also checks count order
        hmr_dico.check_prefix_of(ext_dico)
        assert len(ext_dico) - len(hmr_dico) == side["n_new"]
        assert (len(hmr_dico), len(ext_dico)) == (side["n_words_hmr"], side["n_words_ext"])
        for t in set(hmr_counts) & set(lmr_counts):
            assert ext_dico.index(t) == hmr_dico.index(t) != UNK

        extend_vocab(hmr, lmr, d / "out", "lx", "hx", log=quiet)  # same inputs again: identical files
        assert (ext.read_bytes(), (d / "out" / "vocab.lx-hx-ext.json").read_bytes()) == first
        assert sorted(p.name for p in (d / "out").iterdir()) == sorted([ext.name, "vocab.lx-hx-ext.json"])


def test_dictionary_read_vocab_skips_like_xlm(tmp_path):
    v = tmp_path / "vocab"
    v.write_text("the 9\nx\u2028y 8\nthree fields 7 7\nthe 6\n<s> 6\nword 5\nlonely\nend 5\n")
    d = Dictionary.read_vocab(v)
    assert d.words == SPECIAL_WORDS + ["the", "word", "end"]
    assert d.counts == [0] * N_SPECIAL + [9, 5, 5]
    assert (d.index("the"), d.index("word"), d.index("nope")) == (14, 15, UNK)


def test_dictionary_rejects_increasing_counts(tmp_path):
    v = tmp_path / "vocab"
    v.write_text("a 5\nb 5\nc 2\nd 3\n")
    with pytest.raises(InputError, match=r"vocab:4: count 3 of 'd' is larger than the previous count 2"):
        Dictionary.read_vocab(v)


def test_dictionary_encode_decode():
    d = Dictionary.from_tokens(["a", "b@@", "c"], [3, 2, 1])
    assert d.encode("a  b@@ c\tzz <unk> </s> <special3> a") == [14, 15, 16, UNK, UNK, 14]  # specials but <unk> dropped
    assert d.decode([14, 15, 16, UNK]) == "a b@@ c <unk>"
    assert Dictionary.from_words(d.words, d.counts) == d
    with pytest.raises(InputError):
        Dictionary.from_words(["a", "b"])


def test_dictionary_prefix():
    small = Dictionary.from_tokens(["a", "b"])
    big = Dictionary.from_tokens(["a", "b", "c"])
    small.check_prefix_of(big)
    assert small.is_prefix_of(big) and not big.is_prefix_of(small)
    with pytest.raises(InputError, match="id 15 is 'b' in the first and 'x'"):
        small.check_prefix_of(Dictionary.from_tokens(["a", "x", "b"]))
    with pytest.raises(InputError, match="larger"):
        big.check_prefix_of(small)


@pytest.mark.parametrize("content, match", [
    (b"", r"no tokens in .*a\.txt .*empty or blank lines only"),
    (b"\n  \n\n", r"no tokens in .*a\.txt"),
    (b"ok fine\nbad \xff\xfe token\n", r"a\.txt:2: invalid UTF-8 \(bytes b'\\xff\\xfe t' at byte 4 of the line\)"),
    (b"\x93NUMPY\x01\x00v\x00{'descr': '<u2'}\n", r"a\.txt:1: invalid UTF-8"),  # a binary file, not text
])
def test_count_vocab_rejects_bad_input(tmp_path, content, match):
    (tmp_path / "a.txt").write_bytes(content)
    with pytest.raises(InputError, match=match + r".*vocab not written"):
        count_vocab([tmp_path / "a.txt"], tmp_path / "vocab", log=quiet)
    assert not (tmp_path / "vocab").exists()


@pytest.mark.parametrize("content, match", [
    ("the cat sat on the mat\na dog sat\nthe end of it\n", r"vocab:1: 6 fields instead of 'token count'; 3 of 3 lines"),
    ("", r"vocab: no 'token count' lines"),
    ("the 5\ncat\n" * 3 + "\n".join(f"w{i} x y" for i in range(12)) + "\n",
     r"vocab:2: 1 fields .*; 15 of 18 lines are not 'token count' lines: not a vocabulary file"),
    ("a 5\nb five\n", r"vocab:2: count 'five' is not an integer"),
])
def test_read_vocab_rejects_non_vocabularies(tmp_path, content, match):
    (tmp_path / "vocab").write_text(content)
    with pytest.raises(InputError, match=match):
        Dictionary.read_vocab(tmp_path / "vocab")


def test_read_vocab_rejects_binary(tmp_path):
    (tmp_path / "vocab").write_bytes(b"a 5\nb 4\n\x93NUMPY\xff 3\n")
    with pytest.raises(InputError, match=r"vocab:3: invalid UTF-8 .*not a vocabulary file"):
        Dictionary.read_vocab(tmp_path / "vocab")


def test_read_vocab_tolerates_a_few_odd_lines(tmp_path):
    """XLM skips lines whose token holds a Unicode space; a real vocabulary has a few: still read."""
    rows = [f"w{i} {1000 - i}" for i in range(500)]
    rows[10] = "a\u00a0b 990"  # 3 fields for str.split()
    rows[20] = "x\u3000y 980"
    (tmp_path / "vocab").write_text("\n".join(rows) + "\n")
    d = Dictionary.read_vocab(tmp_path / "vocab")
    assert len(d) == N_SPECIAL + 498 and "w11" in d and "a\u00a0b" not in d
