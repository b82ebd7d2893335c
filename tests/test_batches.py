"""The memory-lean corpus layout and batchers give exactly what the simple ones gave: the same binarized arrays
whether written in one piece or streamed, and batch for batch the same MLM and UNMT batches (same seed) as the
in-memory implementations below, which copied the corpus (the code before the streaming layout)."""
import math

import numpy as np
import pytest
import torch

import relm.data.batches as batches
import relm.data.corpus as corpus_module
from relm.data.batches import SentenceBatches, StreamBatches, pad_batch, parallel_eval_batches
from relm.data.corpus import Corpus, binarize
from relm.errors import InputError
from relm.tokens import BOS, EOS, PAD


# --- the simple implementations (flat ids without EOS + offsets, everything in memory) -----------------------------

def simple_stream(tok, off, bs, bptt):
    stream = np.concatenate([[EOS], np.insert(tok, off[1:], EOS)])
    n_batches = max(1, math.ceil(len(stream) / (bs * bptt)))
    buf = np.full(n_batches * bptt * bs, EOS, dtype=np.int64)
    buf[len(buf) - len(stream):] = stream
    data = buf.reshape(bs, n_batches * bptt)
    return [data[:, i * bptt: (i + 1) * bptt] for i in range(n_batches)]


def simple_pad(sentences):
    lengths = [len(s) + 2 for s in sentences]
    x = np.full((len(sentences), max(lengths)), PAD, dtype=np.int64)
    for i, s in enumerate(sentences):
        x[i, : len(s) + 2] = [BOS, *s, EOS]
    return x, np.array(lengths)


def simple_sentence_pass(tok, off, seed, epoch, tpb, bs, max_len, max_bs):
    lengths = np.diff(off)
    keep = lengths > 0
    if max_len > 0:
        keep &= lengths <= max_len
    indices = np.flatnonzero(keep)
    rng = np.random.default_rng([seed, epoch])
    idx = indices[rng.permutation(len(indices))]
    idx = idx[np.argsort(lengths[idx], kind="stable")]
    if tpb == -1:
        out = np.array_split(idx, math.ceil(len(idx) / bs))
    else:
        ids = np.cumsum(lengths[idx] + 2) // tpb
        _, bounds = np.unique(ids, return_index=True)
        bounds = list(bounds) + [len(idx)]
        out = [idx[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    out = [out[j] for j in rng.permutation(len(out))]
    if max_bs > 0:
        out = [b if len(b) <= max_bs else np.sort(rng.choice(b, max_bs, replace=False)) for b in out]
    return [simple_pad([tok[off[i]: off[i + 1]] for i in b]) for b in out]


# --- fixtures ----------------------------------------------------------------------------------------------------

def write_corpus(tmp_path, lengths, seed=0, n_words=50, name="c"):
    rng = np.random.default_rng(seed)
    vocab = tmp_path / f"vocab.{name}"
    vocab.write_text("".join(f"w{i} {n_words - i}\n" for i in range(n_words)))
    sents = [rng.integers(0, n_words, size=k) for k in lengths]
    text = tmp_path / f"{name}.txt"
    text.write_text("".join(" ".join(f"w{i}" for i in s) + "\n" for s in sents))
    binarize(text, vocab, tmp_path / f"{name}.json", "hx", log=lambda *a: None)
    c = Corpus(tmp_path / f"{name}.json")
    tok = np.concatenate([c[i] for i in range(len(c))]).astype(np.int64)
    off = np.concatenate([[0], np.cumsum([len(c[i]) for i in range(len(c))])])
    return c, tok, off


def random_lengths(n, seed=0, empty=0.05, max_len=40):
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < empty, 0, rng.integers(1, max_len, size=n))


# --- tests -------------------------------------------------------------------------------------------------------

def test_layout_is_the_mlm_stream(tmp_path):
    c, tok, off = write_corpus(tmp_path, [3, 0, 2])
    expect = [EOS, *tok[:3], EOS, EOS, *tok[3:], EOS]
    assert c.tok.tolist() == expect and c.off.tolist() == [0, 4, 5, 8]
    assert [c[i].tolist() for i in range(3)] == [tok[:3].tolist(), [], tok[3:].tolist()]
    assert c.lengths.tolist() == [3, 0, 2] and c.meta["n_tokens"] == 5 and c.meta["format"] == 2


@pytest.mark.parametrize("flush", [1, 7, 1 << 20])
def test_streamed_files_identical_to_unflushed(tmp_path, monkeypatch, flush):
    (tmp_path / "a").mkdir()
    c1, _, _ = write_corpus(tmp_path / "a", random_lengths(300))
    monkeypatch.setattr(corpus_module, "FLUSH_TOKENS", flush)
    c2, _, _ = write_corpus(tmp_path, random_lengths(300))
    for suffix in (".tok.npy", ".off.npy"):
        assert (tmp_path / "a" / f"c{suffix}").read_bytes() == (tmp_path / f"c{suffix}").read_bytes()
    assert np.array_equal(np.load(tmp_path / "c.tok.npy"), c1.tok)  # a valid .npy for numpy itself


def test_old_layout_refused(tmp_path):
    c, _, _ = write_corpus(tmp_path, [3, 2])
    meta = dict(c.meta)
    del meta["format"]
    (tmp_path / "c.json").write_text(__import__("json").dumps(meta))
    with pytest.raises(InputError, match=r"c\.json has layout 1, this relm reads layout 2 .*re-run its binarization"):
        Corpus(tmp_path / "c.json")


@pytest.mark.parametrize("bs, bptt", [(1, 5), (3, 7), (4, 8), (32, 16)])
def test_stream_batches_equal_simple(tmp_path, bs, bptt):
    c, tok, off = write_corpus(tmp_path, random_lengths(200))
    new = StreamBatches(c, bs, bptt, shuffle=False)
    old = simple_stream(tok, off, bs, bptt)
    assert len(new) == len(old)
    assert all(np.array_equal(new.batch(i)[0].numpy(), old[i]) for i in range(len(old)))


@pytest.mark.parametrize("tpb, max_len, max_bs, chunk", [
    (60, 100, 0, 1 << 20), (60, 100, 0, 7), (25, 6, 0, 13), (-1, 0, 0, 5), (200, 100, 4, 11), (200, 30, 0, 1),
])
def test_sentence_batches_equal_simple(tmp_path, monkeypatch, tpb, max_len, max_bs, chunk):
    monkeypatch.setattr(batches, "CHUNK", chunk)
    c, tok, off = write_corpus(tmp_path, random_lengths(500, seed=2))
    it = SentenceBatches(c, tpb, 16, max_len, seed=5, max_batch_size=max_bs)
    for epoch in (0, 1):
        old = simple_sentence_pass(tok, off, 5, epoch, tpb, 16, max_len, max_bs)
        for x_old, len_old in old:
            x, lengths = it.next()
            assert np.array_equal(x.numpy(), x_old) and np.array_equal(lengths.numpy(), len_old)
    assert it.state() == {"epoch": 1, "pos": len(old)}


def test_pad_batch_and_eval_batches_equal_simple(tmp_path):
    sents = [np.array([5, 6, 7]), np.array([], dtype=np.int64), np.array([9])]
    x, lengths = pad_batch(sents)
    x_old, len_old = simple_pad(sents)
    assert np.array_equal(x.numpy(), x_old) and np.array_equal(lengths.numpy(), len_old)
    a, tok_a, off_a = write_corpus(tmp_path, random_lengths(50, seed=3), name="a")
    b, tok_b, off_b = write_corpus(tmp_path, random_lengths(50, seed=4), name="b", seed=1)
    for x1, l1, x2, l2, idx in parallel_eval_batches(a, b, 7, max_len=30):
        assert torch.equal(x1, torch.from_numpy(simple_pad([tok_a[off_a[i]: off_a[i + 1]] for i in idx])[0]))
        assert torch.equal(x2, torch.from_numpy(simple_pad([tok_b[off_b[i]: off_b[i + 1]] for i in idx])[0]))
