"""Batches for training and evaluation, batch-first: MLM streams (XLM StreamDataset) and length-grouped sentence
batches (XLM Dataset.get_iterator) for UNMT.

Both read the memory-mapped corpus (relm.data.corpus: EOS s0 EOS s1 ... EOS) without copying it: an MLM batch is a
window of the file itself, a UNMT batch gathers the [EOS s EOS] rows of its sentences. What a pass over the data
costs in memory is a few compact index arrays (int32 per sentence), not copies of the corpus.

Training iterators are infinite, re-shuffle on every pass over the data and are resumable: the order of pass e is a
pure function of (seed, pass e), so `state()` = {"epoch": e, "pos": batches already given in pass e} is enough to
continue with exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from relm.data.corpus import Corpus
from relm.tokens import BOS, EOS, PAD

CHUNK = 1 << 20  # sentences handled at a time when a pass is computed (bounds the temporary arrays)


def _corpus(corpus) -> Corpus:
    return corpus if isinstance(corpus, Corpus) else Corpus(corpus)


def _index_dtype(n: int):
    return np.int32 if n < 2**31 else np.int64


def _order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class StreamBatches:
    """The corpus file as one stream (an EOS before every sentence and after the last), right-aligned into `bs`
    parallel streams (left padding with EOS); batch i = columns [i*bptt, (i+1)*bptt) of that [bs, n_batches*bptt]
    array, read from the memory map when asked for."""

    def __init__(self, corpus, bs: int, bptt: int, seed: int = 0, shuffle: bool = True):
        self.tok = _corpus(corpus).tok
        n = len(self.tok)
        self.bs, self.bptt, self.seed, self.shuffle = bs, bptt, seed, shuffle
        self.n_batches = max(1, math.ceil(n / (bs * bptt)))
        self.row_len = self.n_batches * bptt
        self.pad = self.n_batches * bptt * bs - n  # EOS before the stream's start
        self.n_tokens = n
        self.epoch, self.pos = 0, 0

    def __len__(self) -> int:
        return self.n_batches

    def batch(self, i: int):
        """x [bs, bptt] (int64), lengths [bs] (all bptt)."""
        pos = (np.arange(self.bs) * self.row_len + i * self.bptt - self.pad)[:, None] + np.arange(self.bptt)
        x = np.where(pos >= 0, self.tok[np.maximum(pos, 0)], EOS).astype(np.int64)  # row r: stream from r*row_len
        return torch.from_numpy(x), torch.full((self.bs,), self.bptt, dtype=torch.long)

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


def gather_rows(tok: np.ndarray, off: np.ndarray, ids: np.ndarray):
    """Sentences `ids` of a corpus as [BOS w.. EOS] rows padded with PAD -> (x [bs, max_len+2] int64, lengths [bs]).
    Each row is copied from the file's [EOS w.. EOS] with its first id replaced by BOS."""
    start = np.asarray(off[ids], dtype=np.int64)
    lengths = np.asarray(off[ids + 1], dtype=np.int64) - start + 1  # len(s) + 2
    cols = np.arange(int(lengths.max()))
    pos = start[:, None] + cols
    x = np.where(cols < lengths[:, None], tok[np.minimum(pos, len(tok) - 1)], PAD).astype(np.int64)
    x[:, 0] = BOS
    return torch.from_numpy(x), torch.from_numpy(lengths)


def pad_batch(sentences: list[np.ndarray]):
    """[BOS w.. EOS] rows padded with PAD -> (x [bs, max_len+2] int64, lengths [bs]), from a list of id arrays."""
    lengths = np.array([len(s) for s in sentences], dtype=np.int64)
    off = np.concatenate([[0], np.cumsum(lengths + 1)])
    tok = np.full(int(off[-1]) + 1, EOS, dtype=np.int64)
    for s, a in zip(sentences, off):
        tok[a + 1: a + 1 + len(s)] = s
    return gather_rows(tok, off, np.arange(len(sentences)))


def length_counts(ids: np.ndarray | None, lengths: np.ndarray) -> np.ndarray:
    """Histogram of lengths[ids] (all sentences if ids is None), computed in chunks."""
    n = len(lengths) if ids is None else len(ids)
    counts = np.zeros(int(lengths.max()) + 1 if len(lengths) else 1, dtype=np.int64)
    for a in range(0, n, CHUNK):
        c = np.bincount(lengths[a: a + CHUNK] if ids is None else lengths[ids[a: a + CHUNK]])
        counts[: len(c)] += c
    return counts


def sort_by_length(ids: np.ndarray, lengths: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """`ids` stably sorted by lengths[ids] (whose histogram is `counts`): the same as
    ids[np.argsort(lengths[ids], kind="stable")], as a counting sort over chunks, so that no corpus-sized int64
    array is made."""
    cursor = np.cumsum(counts) - counts  # where the next sentence of each length goes
    out = np.empty_like(ids)
    for a in range(0, len(ids), CHUNK):
        chunk = ids[a: a + CHUNK]
        ls = lengths[chunk]
        o = np.argsort(ls, kind="stable")
        chunk, ls = chunk[o], ls[o]
        starts = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], len(ls)]):
            k = ls[s]
            out[cursor[k]: cursor[k] + e - s] = chunk[s:e]
            cursor[k] += e - s
    return out


def batch_bounds(counts: np.ndarray, tokens_per_batch: int, batch_size: int) -> np.ndarray:
    """XLM's cut of the length-sorted sentences (counts[k] of length k) into batches, as n_batches + 1 bounds: where
    cumsum(len + 2) // tokens_per_batch changes, or ceil(n / batch_size) near-equal parts (np.array_split) when
    tokens_per_batch == -1."""
    n = int(counts.sum())
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    if tokens_per_batch == -1:
        k = math.ceil(n / batch_size)
        sizes = np.full(k, n // k, dtype=np.int64)
        sizes[: n % k] += 1
        return np.concatenate([[0], np.cumsum(sizes)])
    ends = np.cumsum(counts)
    bounds, total, last = [np.zeros(1, dtype=np.int64)], 0, None
    for a in range(0, n, CHUNK):
        tokens = np.searchsorted(ends, np.arange(a, min(n, a + CHUNK)), side="right") + 2  # sorted lengths + 2
        ids = (total + np.cumsum(tokens)) // tokens_per_batch
        prev = np.r_[ids[0] if last is None else last, ids[:-1]]
        bounds.append(a + np.flatnonzero(ids != prev))
        total, last = total + int(tokens.sum()), ids[-1]
    bounds.append(np.array([n], dtype=np.int64))
    return np.concatenate(bounds)


class SentenceBatches:
    """Training batches of whole sentences (UNMT): sentences longer than max_len tokens and empty ones are dropped;
    each pass: seeded permutation, stable sort by length, cut by tokens_per_batch, shuffled batch order;
    max_batch_size > 0 keeps a random subset of that many sentences of a larger batch (XLM).

    A pass is held as three arrays (sentence ids in length order, batch bounds, batch order): 4 bytes per sentence
    plus 16 per batch."""

    def __init__(self, corpus, tokens_per_batch: int, batch_size: int, max_len: int, seed: int = 0,
                 max_batch_size: int = 0):
        c = _corpus(corpus)
        self.tok, self.off = c.tok, c.off
        self.lengths = c.lengths
        keep = self.lengths > 0
        if max_len > 0:
            keep &= self.lengths <= max_len
        self.n = int(keep.sum())
        self.indices = None if self.n == len(c) else np.flatnonzero(keep).astype(_index_dtype(len(c)))
        del keep
        self.counts = length_counts(self.indices, self.lengths)  # the same in every pass
        if self.n == 0:
            raise ValueError(f"no training sentences left in {c.path} "
                             f"after removing empty ones and those longer than max_len={max_len}")
        self.tpb, self.bs, self.max_bs, self.seed = tokens_per_batch, batch_size, max_batch_size, seed
        self.epoch, self.pos = 0, 0
        self._pass_epoch = -1

    def _pass(self, epoch: int) -> int:
        """Compute pass `epoch` (once); returns its number of batches."""
        if self._pass_epoch != epoch:
            self._order = self._bounds = None  # free the previous pass first
            rng = np.random.default_rng([self.seed, epoch])
            ids = np.arange(self.n, dtype=_index_dtype(self.n))
            rng.shuffle(ids)  # = rng.permutation(n), without a second array
            if self.indices is not None:
                ids = self.indices[ids]
            order = sort_by_length(ids, self.lengths, self.counts)
            del ids
            self._bounds = batch_bounds(self.counts, self.tpb, self.bs)
            n_batches = len(self._bounds) - 1
            self._batch_order = rng.permutation(n_batches)
            self._subsets = {}
            if self.max_bs > 0:
                sizes = np.diff(self._bounds)[self._batch_order]
                for j in np.flatnonzero(sizes > self.max_bs):
                    b = self._batch_order[j]
                    self._subsets[int(j)] = np.sort(rng.choice(order[self._bounds[b]: self._bounds[b + 1]],
                                                               self.max_bs, replace=False))
            self._order, self._pass_epoch = order, epoch
        return len(self._bounds) - 1

    def batch_ids(self, epoch: int, pos: int) -> np.ndarray:
        """Sentence ids of batch `pos` of pass `epoch`."""
        self._pass(epoch)
        if pos in self._subsets:
            return self._subsets[pos]
        b = self._batch_order[pos]
        return self._order[self._bounds[b]: self._bounds[b + 1]]

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])

    def next(self):
        """(x [bs, slen], lengths [bs]) of the next batch."""
        if self.pos >= self._pass(self.epoch):
            self.epoch, self.pos = self.epoch + 1, 0
        ids = self.batch_ids(self.epoch, self.pos)
        self.pos += 1
        return gather_rows(self.tok, self.off, ids)


def parallel_eval_batches(src, tgt, batch_size: int, max_len: int = 0):
    """Evaluation batches of a line-aligned pair of corpora: pairs with an empty side or a side longer than max_len
    are removed (relm); sorted by source length; yields (x1, len1, x2, len2, sentence indices)."""
    src, tgt = _corpus(src), _corpus(tgt)
    if len(src) != len(tgt):
        raise ValueError(f"evaluation corpora are not line-aligned: {len(src)} vs {len(tgt)} sentences "
                         f"({src.path}, {tgt.path})")
    l1, l2 = src.lengths, tgt.lengths
    keep = (l1 > 0) & (l2 > 0)
    if max_len > 0:
        keep &= (l1 <= max_len) & (l2 <= max_len)
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(l1[idx], kind="stable")]
    for a in range(0, len(idx), batch_size):
        b = idx[a: a + batch_size]
        yield (*gather_rows(src.tok, src.off, b), *gather_rows(tgt.tok, tgt.off, b), b)
