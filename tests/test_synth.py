"""Tests for the synthetic demo pair (relm/text/synth.py)."""
import collections
import random
import re

import pytest
import sacrebleu
from hypothesis import given, settings, strategies as st

from relm.text.synth import ADJ, NOUN, VERB, SynthPair, generate_pair

SMALL = dict(n_hmr=3000, n_lmr=800, n_valid=150, n_test=200, n_concepts=300)
FILES = [f"{split}.{lang}" for split in ("train", "valid", "test") for lang in ("hx", "lx")]


def gen(tmp_path, name="out", **kw):
    out = tmp_path / name
    summary = generate_pair(out, log=lambda *a: None, **(SMALL | kw))
    return out, summary


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def tok(line):
    return re.sub(r"([,.?])", r" \1", line).split()


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    return gen(tmp_path_factory.mktemp("synth"))


def test_determinism(tmp_path):
    a, _ = gen(tmp_path, "a", seed=3)
    b, _ = gen(tmp_path, "b", seed=3)
    c, _ = gen(tmp_path, "c", seed=4)
    for f in FILES:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
        assert (a / f).read_bytes() != (c / f).read_bytes(), f
    assert sorted(p.name for p in a.iterdir()) == sorted(FILES)  # no temporary files left behind


def test_heldout_independent_of_corpus_sizes(tmp_path):
    a, _ = gen(tmp_path, "a", n_hmr=500, n_lmr=100)
    b, _ = gen(tmp_path, "b", n_hmr=900, n_lmr=300)
    for f in ("valid.hx", "valid.lx", "test.hx", "test.lx"):
        assert (a / f).read_bytes() == (b / f).read_bytes()


def test_counts_and_format(pair_dir):
    out, summary = pair_dir
    want = {"train.hx": SMALL["n_hmr"], "train.lx": SMALL["n_lmr"], "valid.hx": SMALL["n_valid"],
            "valid.lx": SMALL["n_valid"], "test.hx": SMALL["n_test"], "test.lx": SMALL["n_test"]}
    assert summary["lines"] == want
    for f, n in want.items():
        raw = (out / f).read_bytes()
        assert raw.endswith(b"\n") and b"\r" not in raw
        ls = raw.decode("utf-8").split("\n")[:-1]
        assert len(ls) == n
        for line in ls:
            assert line[0].isupper() or line[0].isdigit(), line
            assert line[-1] in ".?" and "  " not in line and " ." not in line and " ," not in line, line
            assert 3 <= len(tok(line)) <= 16, line
    assert summary["cognates"] == pytest.approx(0.5 * summary["n_concepts"], abs=6)
    assert 0 < summary["types"]["hx"] < summary["types"]["lx"]  # LMR inflects more


@pytest.mark.parametrize("split", ["valid", "test"])
def test_parallel_sets_share_names_and_numbers(pair_dir, split):
    out, _ = pair_dir
    h, l = lines(out / f"{split}.hx"), lines(out / f"{split}.lx")
    assert len(h) == len(l)
    anchors = lambda s: sorted(w for w in tok(s)[1:] if w[0].isupper() or w.isdigit())
    assert all(anchors(a) == anchors(b) for a, b in zip(h, l))
    assert sum(1 for a in h if anchors(a)) > len(h) // 10  # names/numbers do occur
    assert all(a[-1] == b[-1] for a, b in zip(h, l))  # question in both or in neither


def check_heldout(out):
    for lang in ("hx", "lx"):
        valid, test = lines(out / f"valid.{lang}"), lines(out / f"test.{lang}")
        train = set(lines(out / f"train.{lang}"))
        assert len(set(valid)) == len(valid) and len(set(test)) == len(test)
        assert not set(valid) & set(test)
        assert not (set(valid) | set(test)) & train


def test_heldout_disjoint(pair_dir):
    check_heldout(pair_dir[0])


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_heldout_disjoint_over_seeds(tmp_path_factory, seed):
    out = tmp_path_factory.mktemp("s")
    generate_pair(out, seed=seed, n_hmr=1500, n_lmr=400, n_valid=80, n_test=80, n_concepts=60, log=lambda *a: None)
    check_heldout(out)


def test_copy_baseline_low(pair_dir):
    out, _ = pair_dir
    h, l = lines(out / "test.hx"), lines(out / "test.lx")
    assert sacrebleu.corpus_bleu(h, [l]).score < 5
    assert sacrebleu.corpus_bleu(l, [h]).score < 5


def test_oracle_word_translation_beats_copy(pair_dir):
    """The parallel sets realize the same concepts: the true lexicon finds most reference words, copying does not."""
    out, _ = pair_dir
    p = SynthPair(0, n_concepts=SMALL["n_concepts"])
    h, l = lines(out / "test.hx"), lines(out / "test.lx")
    for src, ref, side in ((h, l, "hmr"), (l, h, "lmr")):
        hyp = [" ".join(p.word_translate(tok(s), side)) for s in src]
        ref_tok = [" ".join(tok(r)) for r in ref]
        # unigram precision: word order differs, so n-gram BLEU of a word-by-word translation stays low
        oracle = sacrebleu.corpus_bleu(hyp, [ref_tok], force=True).precisions[0]
        copy = sacrebleu.corpus_bleu([" ".join(tok(s)) for s in src], [ref_tok], force=True).precisions[0]
        assert oracle > 70 and oracle > copy + 30, (side, oracle, copy)
        assert all(p.analyze(w, side)[0] != "UNK" for s in src for w in tok(s))


def shared_fractions(out):
    """Fractions of LMR word tokens spelled like an HMR word, and spelled like one or sharing its first 4 letters."""
    h = {w for s in lines(out / "train.hx") for w in tok(s)}
    prefixes = {w.lower()[:4] for w in h if len(w) >= 4}
    words = [w for s in lines(out / "train.lx") for w in tok(s) if w not in ",.?"]
    same = sum(w in h for w in words)
    near = sum(w in h or (len(w) >= 4 and w.lower()[:4] in prefixes) for w in words)
    return same / len(words), near / len(words)


@pytest.mark.parametrize("seed", [0, 1])
def test_shared_material_follows_cognate_rate(tmp_path, seed):
    none = shared_fractions(gen(tmp_path, "none", seed=seed, cognate_rate=0.0)[0])
    some = shared_fractions(gen(tmp_path, "some", seed=seed)[0])  # default rate
    most = shared_fractions(gen(tmp_path, "most", seed=seed, cognate_rate=0.9)[0])
    assert 0.03 < none[0] <= none[1] < 0.12  # names and numbers only
    assert 0.17 < some[0] < 0.32 and 0.28 < some[1] < 0.5
    assert some[0] + 0.08 < most[0] and some[1] + 0.1 < most[1]


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_word_order(seed):
    """HMR: SVO, ADJ before NOUN. LMR: verb-final, ADJ after NOUN."""
    p = SynthPair(seed, n_concepts=80)
    rng = random.Random(seed)
    n_obj = 0
    for _ in range(200):
        s = p.sample(rng)
        tags = {side: [p.analyze(w, side)[0] for w in p.words(s, side)] for side in ("hmr", "lmr")}
        h, l = tags["hmr"], tags["lmr"]
        assert h.count(VERB) == l.count(VERB) == 1
        assert [t for t in l if t not in ("PUNCT", "PART")][-1] == VERB
        for i, t in enumerate(h):
            if t == ADJ:
                assert h[i + 1] == NOUN
        for i, t in enumerate(l):
            if t == ADJ:
                assert l[i - 1] == NOUN
        if s[4] is not None:  # an object: in HMR some noun or name follows the verb
            n_obj += 1
            assert {NOUN, "NAME"} & set(h[h.index(VERB) + 1:])
    assert n_obj > 100


@pytest.mark.parametrize("lang,side", [("hx", "hmr"), ("lx", "lmr")])
@pytest.mark.parametrize("cls", [NOUN, VERB])
def test_zipfian(pair_dir, lang, side, cls):
    """Lexeme frequencies fall off like 1/rank: a few lexemes carry much of the text, with a long tail."""
    out, _ = pair_dir
    p = SynthPair(0, n_concepts=SMALL["n_concepts"])
    counts = collections.Counter()
    for s in lines(out / f"train.{lang}"):
        for w in tok(s):
            c, i, _ = p.analyze(w, side)
            if c == cls:
                counts[i] += 1
    freq = sorted(counts.values(), reverse=True)
    n = len(p.h[cls])
    assert len(freq) > n // 2
    assert sum(freq[: n // 10]) / sum(freq) > 0.4  # uniform: 0.1
    assert freq[0] > 15 * freq[n // 2]


@pytest.mark.parametrize("kw", [dict(cognate_rate=1.5), dict(n_concepts=5)])
def test_bad_parameters(tmp_path, kw):
    with pytest.raises(ValueError):
        gen(tmp_path, **kw)
