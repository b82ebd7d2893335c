"""Denoising auto-encoder noise (XLM's add_noise): word shuffle, word dropout, word blank.

All functions take batch-first padded LongTensors x[bs, slen] whose row i is BOS w1 .. wn EOS followed by
padding (lengths[i] = n + 2), and a numpy RandomState, and return a new (x, lengths). The BOS at position 0
and the final EOS are never touched.
"""
from __future__ import annotations

import numpy as np
import torch

from relm.tokens import EOS, MASK, PAD


def word_shuffle(x: torch.Tensor, lengths: torch.Tensor, k: float, rng: np.random.RandomState):
    """Local shuffle: word j gets score j + U(0, k) and words are sorted by score, so none moves k or more."""
    if k == 0:
        return x, lengths
    bs, slen = x.shape
    noise = rng.uniform(0, k, size=(bs, slen - 1))
    noise[:, 0] = -1  # BOS stays first
    scores = np.arange(slen - 1)[None, :] + noise
    # the final EOS and the padding keep their places: give them scores above every real word, in order
    inner = np.arange(slen - 1)[None, :] < (lengths.numpy()[:, None] - 1)
    scores = np.where(inner, scores, 1e9 + np.arange(slen - 1)[None, :])
    perm = torch.from_numpy(np.argsort(scores, axis=1, kind="stable"))
    out = x.clone()
    out[:, : slen - 1] = torch.gather(x[:, : slen - 1], 1, perm)
    return out, lengths


def word_dropout(x: torch.Tensor, lengths: torch.Tensor, p: float, rng: np.random.RandomState):
    """Drop each word with probability p; a sentence left without words gets one random original word back.
    Draws the same random numbers as XLM's per-sentence loop: one uniform per position, then one randint per
    emptied sentence, in row order."""
    if p == 0:
        return x, lengths
    bs, slen = x.shape
    keep = rng.rand(bs, slen - 1) >= p
    keep[:, 0] = True
    n = lengths.numpy() - 1  # BOS + words, without the final EOS
    keep &= np.arange(slen - 1)[None, :] < n[:, None]
    for i in np.flatnonzero((keep.sum(1) == 1) & (n > 1)):
        keep[i, rng.randint(1, n[i])] = True
    keep_t = torch.from_numpy(keep)
    new_len = keep_t.sum(1) + 1
    rows, cols = keep_t.nonzero(as_tuple=True)
    out = torch.full((bs, int(new_len.max())), PAD, dtype=x.dtype)
    out[rows, keep_t.cumsum(1)[rows, cols] - 1] = x[rows, cols]
    out[torch.arange(bs), new_len - 1] = EOS
    return out, new_len


def word_blank(x: torch.Tensor, lengths: torch.Tensor, p: float, rng: np.random.RandomState, mask_id: int = MASK):
    """Replace each word with MASK with probability p; lengths are unchanged."""
    if p == 0:
        return x, lengths
    bs, slen = x.shape
    blank = torch.from_numpy(rng.rand(bs, slen - 1) < p)
    blank[:, 0] = False
    pos = torch.arange(slen - 1)[None, :]
    blank &= pos < (lengths[:, None] - 1)
    out = x.clone()
    out[:, : slen - 1][blank] = mask_id
    return out, lengths


def add_noise(x, lengths, shuffle: float, dropout: float, blank: float, rng: np.random.RandomState):
    """XLM's order: shuffle, then dropout, then blank."""
    x, lengths = word_shuffle(x, lengths, shuffle, rng)
    x, lengths = word_dropout(x, lengths, dropout, rng)
    return word_blank(x, lengths, blank, rng)
