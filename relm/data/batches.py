"""Batches for training and evaluation, batch-first: MLM streams (XLM StreamDataset) and length-grouped sentence
batches (XLM Dataset.get_iterator) for UNMT.

Training iterators are infinite, re-shuffle on every pass over the data and are resumable: the order of pass e is a
pure function of (seed, pass e), so `state()` = {"epoch": e, "pos": batches already given in pass e} is enough to
continue with exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from relm.tokens import BOS, EOS, PAD


def corpus_arrays(corpus) -> tuple[np.ndarray, np.ndarray]:
    """(flat token ids, offsets) of a relm.data.corpus.Corpus or of a corpus JSON path."""
    for tok_name, off_name in (("tok", "off"), ("tokens", "offsets")):
        if hasattr(corpus, tok_name) and hasattr(corpus, off_name):
            return getattr(corpus, tok_name), getattr(corpus, off_name)
    path = str(getattr(corpus, "path", corpus))
    prefix = path[: -len(".json")] if path.endswith(".json") else path
    return np.load(prefix + ".tok.npy", mmap_mode="r"), np.load(prefix + ".off.npy", mmap_mode="r")


def _order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class StreamBatches:
    """All sentences, each followed by EOS (plus one leading EOS), right-aligned into `bs` parallel streams
    (left padding with EOS); batch i = columns [i*bptt, (i+1)*bptt) of the [bs, n_batches*bptt] array."""

    def __init__(self, corpus, bs: int, bptt: int, seed: int = 0, shuffle: bool = True):
        tok, off = corpus_arrays(corpus)
        tok = np.asarray(tok)
        off = np.asarray(off, dtype=np.int64)
        # EOS before every sentence start except the first (inserting at off[n] = len appends the last one)
        stream = np.concatenate([np.array([EOS], dtype=tok.dtype), np.insert(tok, off[1:], EOS)])
        n = len(stream)
        self.bs, self.bptt, self.seed, self.shuffle = bs, bptt, seed, shuffle
        self.n_batches = max(1, math.ceil(n / (bs * bptt)))
        total = self.n_batches * bptt * bs
        buf = np.full(total, EOS, dtype=stream.dtype)
        buf[total - n:] = stream
        self.data = buf.reshape(bs, self.n_batches * bptt)  # kept in the corpus dtype (uint16 for small vocabularies)
        self.n_tokens = n
        self.epoch, self.pos = 0, 0

    def __len__(self) -> int:
        return self.n_batches

    def batch(self, i: int):
        """x [bs, bptt] (int64), lengths [bs] (all bptt)."""
        x = torch.from_numpy(self.data[:, i * self.bptt: (i + 1) * self.bptt].astype(np.int64))
        return x, torch.full((self.bs,), self.bptt, dtype=torch.long)

    def eval_batches(self):
        for i in range(self.n_batches):
            yield self.batch(i)

    # --- resumable infinite iteration
    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])

    def next(self):
        if self.pos >= self.n_batches:
            self.epoch, self.pos = self.epoch + 1, 0
        order = _order(self.seed, self.epoch, self.n_batches) if self.shuffle else np.arange(self.n_batches)
        i = int(order[self.pos])
        self.pos += 1
        return self.batch(i)


def pad_batch(sentences: list[np.ndarray]):
    """[BOS w.. EOS] rows padded with PAD -> (x [bs, max_len+2] int64, lengths [bs])."""
    lengths = torch.tensor([len(s) + 2 for s in sentences], dtype=torch.long)
    x = torch.full((len(sentences), int(lengths.max())), PAD, dtype=torch.long)
    x[:, 0] = BOS
    for i, s in enumerate(sentences):
        x[i, 1: len(s) + 1] = torch.from_numpy(np.asarray(s, dtype=np.int64))
        x[i, len(s) + 1] = EOS
    return x, lengths


def split_batches(indices: np.ndarray, lengths: np.ndarray, tokens_per_batch: int, batch_size: int) -> list[np.ndarray]:
    """XLM: cut `indices` (already ordered) where cumsum(len + 2) // tokens_per_batch changes, or into
    ceil(n / batch_size) near-equal chunks when tokens_per_batch == -1."""
    if len(indices) == 0:
        return []
    if tokens_per_batch == -1:
        return np.array_split(indices, math.ceil(len(indices) / batch_size))
    ids = np.cumsum(lengths[indices] + 2) // tokens_per_batch
    _, bounds = np.unique(ids, return_index=True)
    bounds = list(bounds) + [len(indices)]
    return [indices[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


class SentenceBatches:
    """Training batches of whole sentences (UNMT): sentences longer than max_len tokens and empty ones are dropped;
    each pass: seeded permutation, stable sort by length, cut by tokens_per_batch, shuffled batch order;
    max_batch_size > 0 keeps a random subset of that many sentences of a larger batch (XLM)."""

    def __init__(self, corpus, tokens_per_batch: int, batch_size: int, max_len: int, seed: int = 0,
                 max_batch_size: int = 0):
        self.tok, off = corpus_arrays(corpus)
        self.off = np.asarray(off, dtype=np.int64)
        self.lengths = np.diff(self.off)
        keep = self.lengths > 0
        if max_len > 0:
            keep &= self.lengths <= max_len
        self.indices = np.flatnonzero(keep)
        if len(self.indices) == 0:
            raise ValueError(f"no training sentences left in {getattr(corpus, 'path', corpus)} "
                             f"after removing empty ones and those longer than max_len={max_len}")
        self.tpb, self.bs, self.max_bs, self.seed = tokens_per_batch, batch_size, max_batch_size, seed
        self.epoch, self.pos = 0, 0
        self._batches, self._batches_epoch = None, -1

    def sentence(self, i: int) -> np.ndarray:
        return self.tok[self.off[i]: self.off[i + 1]]

    def _pass(self, epoch: int) -> list[np.ndarray]:
        if self._batches_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            idx = self.indices[rng.permutation(len(self.indices))]
            idx = idx[np.argsort(self.lengths[idx], kind="stable")]
            batches = split_batches(idx, self.lengths, self.tpb, self.bs)
            batches = [batches[j] for j in rng.permutation(len(batches))]
            if self.max_bs > 0:
                batches = [b if len(b) <= self.max_bs else np.sort(rng.choice(b, self.max_bs, replace=False))
                           for b in batches]
            self._batches, self._batches_epoch = batches, epoch
        return self._batches

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])

    def next(self):
        """(x [bs, slen], lengths [bs]) of the next batch."""
        if self.pos >= len(self._pass(self.epoch)):
            self.epoch, self.pos = self.epoch + 1, 0
        b = self._pass(self.epoch)[self.pos]
        self.pos += 1
        return pad_batch([self.sentence(i) for i in b])


def parallel_eval_batches(src, tgt, batch_size: int, max_len: int = 0):
    """Evaluation batches of a line-aligned pair of corpora: pairs with an empty side or a side longer than max_len
    are removed (relm); sorted by source length; yields (x1, len1, x2, len2, sentence indices)."""
    tok1, off1 = corpus_arrays(src)
    tok2, off2 = corpus_arrays(tgt)
    off1, off2 = np.asarray(off1, dtype=np.int64), np.asarray(off2, dtype=np.int64)
    if len(off1) != len(off2):
        raise ValueError(f"evaluation corpora are not line-aligned: {len(off1) - 1} vs {len(off2) - 1} sentences "
                         f"({getattr(src, 'path', src)}, {getattr(tgt, 'path', tgt)})")
    l1, l2 = np.diff(off1), np.diff(off2)
    keep = (l1 > 0) & (l2 > 0)
    if max_len > 0:
        keep &= (l1 <= max_len) & (l2 <= max_len)
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(l1[idx], kind="stable")]
    for a in range(0, len(idx), batch_size):
        b = idx[a: a + batch_size]
        x1, len1 = pad_batch([tok1[off1[i]: off1[i + 1]] for i in b])
        x2, len2 = pad_batch([tok2[off2[i]: off2[i + 1]] for i in b])
        yield x1, len1, x2, len2, b
