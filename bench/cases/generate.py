"""Greedy and beam-search decoding (relm.generate) with the decoder's incremental cache against the same decoding
without it (use_cache=False: the decoder re-runs the whole prefix at every step, as a model without a cache must).

Model: a random-initialized relm encoder-decoder (relm.model.transformer, dim 256, 4 layers, 8 heads, 8,000 words,
two languages). Sources: Zipf-distributed word ids, 10-40 tokens, batches of 32 sentences. EOS is suppressed so that
every sentence runs to the back-translation length limit (relm.generate.BACK_TRANSLATION: 1.3 x longest source + 5):
the work per sentence is then fixed, not left to a random model. Both implementations must give the same tokens
(compared by digest).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from bench.harness import zipf_sample
from relm.config import ModelConfig
from relm.generate import BACK_TRANSLATION, generate_beam, generate_greedy
from relm.model.transformer import TransformerModel
from relm.tokens import EOS, N_SPECIAL

SIZES = {"small": {"sentences": 64, "beam_sentences": 16}, "large": {"sentences": 256, "beam_sentences": 64}}
MODEL = ModelConfig(dim=256, n_layers=4, n_heads=8, max_positions=128)
N_WORDS, BATCH, BEAM = 8000, 32, 4


def _sources(size: str, work: Path) -> Path:
    return work / f"src.{size}.npz"


def prepare(size: str, work: Path) -> None:
    path = _sources(size, work)
    if path.exists():
        return
    rng = np.random.default_rng(2)
    n = SIZES[size]["sentences"]
    lengths = rng.integers(10, 41, n)
    ids = N_SPECIAL + zipf_sample(rng, int(lengths.sum()), N_WORDS - N_SPECIAL)
    work.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), lengths=lengths, ids=ids)
    path.with_suffix(".tmp.npz").replace(path)


def _models():
    torch.manual_seed(0)
    enc = TransformerModel(MODEL, N_WORDS, 2, is_decoder=False).eval()
    dec = TransformerModel(MODEL, N_WORDS, 2, is_decoder=True).eval()
    with torch.no_grad():
        dec.pred_layer.proj.bias[EOS] = -1e4
    return enc, dec


def _batches(size: str, work: Path, n: int):
    data = np.load(_sources(size, work))
    lengths, offsets = data["lengths"][:n], np.concatenate([[0], np.cumsum(data["lengths"])])
    for a in range(0, n, BATCH):
        ls = lengths[a: a + BATCH]
        x = torch.full((len(ls), int(ls.max()) + 2), 2, dtype=torch.long)  # PAD; EOS at both ends like XLM
        for i, k in enumerate(range(a, a + len(ls))):
            x[i, 0] = x[i, ls[i] + 1] = EOS
            x[i, 1: ls[i] + 1] = torch.from_numpy(data["ids"][offsets[k]: offsets[k + 1]])
        yield x, torch.from_numpy(ls + 2)


def _decode(beam: bool, use_cache: bool):
    def run(size: str, work: Path) -> dict:
        enc, dec = _models()
        n = SIZES[size]["beam_sentences" if beam else "sentences"]
        digest, tokens = hashlib.sha1(), 0
        with torch.no_grad():
            for x, lengths in _batches(size, work, n):
                src = enc(x, lengths, torch.zeros_like(x))
                limit = BACK_TRANSLATION(lengths, MODEL.max_positions)
                if beam:
                    out, out_len = generate_beam(dec, src, lengths, 1, BEAM, max_len=limit, use_cache=use_cache)
                else:
                    out, out_len = generate_greedy(dec, src, lengths, 1, limit, use_cache=use_cache)
                digest.update(out.numpy().tobytes())
                tokens += int(out_len.sum())
        return {"items": n, "unit": "sentences", "sentences": n, "tokens": tokens, "digest": digest.hexdigest()}
    return run


CASES = {
    "generate_greedy": {"relm": _decode(False, True), "reference": _decode(False, False)},
    "generate_beam": {"relm": _decode(True, True), "reference": _decode(True, False)},
}


def project(rows: list[dict], n: float) -> dict:
    """Not projected: decoding time depends on the model and the lengths, not on a corpus size."""
    return {"model": "not projected", "projections": []}
