"""Properties of the denoising noise (XLM add_noise semantics) on batch-first padded batches."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from relm.data.batches import pad_batch
from relm.tokens import MASK, PAD
from relm.data.noise import add_noise, word_blank, word_dropout, word_shuffle

# sentences of distinct word ids (so that each word can be followed), 0..12 words
sentences = st.lists(st.lists(st.integers(14, 200), min_size=0, max_size=12, unique=True), min_size=1, max_size=6)
seeds = st.integers(0, 2**31 - 1)


def rows(x, lengths):
    """Words of each row (without BOS/EOS), after checking BOS/EOS/padding."""
    out = []
    for r, n in zip(x.tolist(), lengths.tolist()):
        assert r[0] == 1 and r[n - 1] == 1
        assert all(t == PAD for t in r[n:])
        out.append(r[1: n - 1])
    return out


@settings(max_examples=150, deadline=None)
@given(sentences, st.floats(0, 6), seeds)
def test_shuffle_is_local(sents, k, seed):
    x, lengths = pad_batch([np.array(s) for s in sents])
    y, ly = word_shuffle(x, lengths, k, np.random.RandomState(seed))
    assert torch.equal(ly, lengths)
    for before, after in zip(sents, rows(y, ly)):
        assert sorted(after) == sorted(before)
        for j, w in enumerate(before):
            assert abs(after.index(w) - j) < k or (k == 0 and after.index(w) == j)


@settings(max_examples=150, deadline=None)
@given(sentences, st.floats(0, 1), seeds)
def test_dropout_keeps_order_and_never_empties(sents, p, seed):
    x, lengths = pad_batch([np.array(s) for s in sents])
    y, ly = word_dropout(x, lengths, p, np.random.RandomState(seed))
    for before, after in zip(sents, rows(y, ly)):
        assert len(after) <= len(before)
        if before:
            assert len(after) >= 1
        if len(after) == 1:
            assert after[0] in before
        else:
            it = iter(before)
            assert all(w in it for w in after)  # a subsequence: order kept


@settings(max_examples=150, deadline=None)
@given(sentences, st.floats(0, 1), seeds)
def test_blank_keeps_lengths(sents, p, seed):
    x, lengths = pad_batch([np.array(s) for s in sents])
    y, ly = word_blank(x, lengths, p, np.random.RandomState(seed))
    assert torch.equal(ly, lengths) and y.shape == x.shape
    for before, after in zip(sents, rows(y, ly)):
        assert all(a == b or a == MASK for a, b in zip(after, before))


@pytest.mark.parametrize("p, expect", [(0.0, "same"), (1.0, "all")])
def test_extremes(p, expect):
    sents = [np.arange(20, 30), np.arange(40, 43)]
    x, lengths = pad_batch(sents)
    yb, _ = word_blank(x, lengths, p, np.random.RandomState(0))
    yd, ld = word_dropout(x, lengths, p, np.random.RandomState(0))
    if expect == "same":
        assert torch.equal(yb, x) and torch.equal(yd, x)
    else:
        assert all(w == MASK for r in rows(yb, lengths) for w in r)
        assert ld.tolist() == [3, 3]  # one word back in every sentence


def test_shuffle_moves_words_and_is_deterministic():
    x, lengths = pad_batch([np.arange(20, 60)] * 4)
    a = add_noise(x, lengths, 3, 0.1, 0.1, np.random.RandomState(1))
    b = add_noise(x, lengths, 3, 0.1, 0.1, np.random.RandomState(1))
    c = add_noise(x, lengths, 3, 0.1, 0.1, np.random.RandomState(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    y, _ = word_shuffle(x, lengths, 3, np.random.RandomState(0))
    assert not torch.equal(y, x)


def dropout_per_sentence(x, lengths, p, rng):
    """XLM's per-sentence word dropout, kept as the reference of the vectorized one."""
    bs, slen = x.shape
    keep = rng.rand(bs, slen - 1) >= p
    keep[:, 0] = True
    rows_ = []
    for i in range(bs):
        words = x[i, : lengths[i] - 1].tolist()
        new = [w for j, w in enumerate(words) if keep[i, j]]
        if len(new) == 1 and len(words) > 1:
            new.append(words[rng.randint(1, len(words))])
        rows_.append(new + [1])
    out = torch.full((bs, max(map(len, rows_))), PAD, dtype=x.dtype)
    for i, r in enumerate(rows_):
        out[i, : len(r)] = torch.tensor(r)
    return out, torch.tensor([len(r) for r in rows_])


@settings(max_examples=200, deadline=None)
@given(sentences, st.floats(0.01, 1), seeds)
def test_dropout_equals_the_per_sentence_loop(sents, p, seed):
    """Same output and same random stream afterwards (the next draw agrees) as XLM's loop."""
    x, lengths = pad_batch([np.array(s) for s in sents])
    r1, r2 = np.random.RandomState(seed), np.random.RandomState(seed)
    y1, l1 = word_dropout(x, lengths, p, r1)
    y2, l2 = dropout_per_sentence(x, lengths, p, r2)
    assert torch.equal(y1, y2) and torch.equal(l1, l2)
    assert r1.randint(1 << 30) == r2.randint(1 << 30)
