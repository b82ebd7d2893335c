"""One masked-LM training step (masking, forward, loss, backward, gradient clipping, Adam) of relm's Transformer
against a bare PyTorch model of the same architecture and parameter count.

relm: relm.model.transformer.TransformerModel in relm.train.mlm.MLMNet, batches masked by relm.train.mlm.mask_out,
the update by relm.train.loop.Trainer.optimize (what `relm train mlm` runs per step). reference: what a user would
write with torch.nn: nn.TransformerEncoder of post-norm GELU nn.TransformerEncoderLayer (same dims, dropout 0.1,
LayerNorm eps 1e-12), learned positions, embedding LayerNorm, output layer tied to the token embeddings, the same
80/10/10 masking in torch, torch.optim.Adam and clip_grad_norm_(5). One difference is torch's: its feed-forward
block has a dropout after the activation, XLM's has none.

Sizes are model sizes (dim 256 / 4 layers, dim 512 / 6 layers; 8 heads, bptt 256, batch 8 streams, 12,000 words).
The first step (allocations, Adam's state) is not timed: items = tokens of the timed steps, timed_s their time.
project() scales to the paper's model (see its docstring).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.harness import MAX_WORDS, MIN_WORDS, fit_linear, zipf_sample
from relm.config import MLMConfig, ModelConfig, RunConfig
from relm.model.transformer import LN_EPS, TransformerModel
from relm.tokens import MASK, N_SPECIAL, PAD
from relm.train.loop import Trainer
from relm.train.mlm import MLMNet, mask_out, parse_keep_rand

SIZES = {"small": {"dim": 256, "n_layers": 4, "steps": 4}, "large": {"dim": 512, "n_layers": 6, "steps": 3}}
N_HEADS, BPTT, BATCH, N_WORDS = 8, 256, 8, 12_000
PAPER_MODEL = ModelConfig()  # dim 1024, 6 layers, 8 heads: XLM / RE-LM
TOKENS_PER_SENTENCE = (MIN_WORDS + MAX_WORDS) / 2 + 1  # synthetic_text's mean line + EOS


def _data(size: str, work: Path) -> Path:
    return work / f"streams.{size}.npy"


def prepare(size: str, work: Path) -> None:
    path = _data(size, work)
    if not path.exists():
        rng = np.random.default_rng(3)
        n = (SIZES[size]["steps"] + 1) * BATCH * BPTT
        work.mkdir(parents=True, exist_ok=True)
        ids = (N_SPECIAL + zipf_sample(rng, n, N_WORDS - N_SPECIAL)).reshape(-1, BATCH, BPTT)
        np.save(path.with_suffix(".tmp.npy"), ids)
        path.with_suffix(".tmp.npy").replace(path)


def flops_per_token(dim: int, n_layers: int) -> float:
    """Training FLOPs per token: 6 x the layers' weights, attention scores and values (6 x 2 x bptt x dim per
    layer), the output layer on the 15% masked positions."""
    return 6 * 12 * dim * dim * n_layers + 12 * BPTT * dim * n_layers + 6 * 0.15 * N_WORDS * dim


def _timed_steps(step, batches: np.ndarray) -> float:
    step(torch.from_numpy(batches[0]))  # warm-up, not timed
    t0 = time.perf_counter()
    for x in batches[1:]:
        step(torch.from_numpy(x))
    return time.perf_counter() - t0


def _result(size: str, timed: float, model: nn.Module) -> dict:
    p = SIZES[size]
    tokens = p["steps"] * BATCH * BPTT
    return {"items": tokens, "unit": "tokens", "timed_s": timed, "steps": p["steps"], "dim": p["dim"],
            "n_layers": p["n_layers"], "parameters": sum(q.numel() for q in model.parameters()),
            "flops_per_token": flops_per_token(p["dim"], p["n_layers"])}


def relm(size: str, work: Path) -> dict:
    p = SIZES[size]
    model_cfg = ModelConfig(dim=p["dim"], n_layers=p["n_layers"], n_heads=N_HEADS, max_positions=BPTT)
    cfg = MLMConfig(model=model_cfg, run=RunConfig(device="cpu", amp="none"), langs=["xx"], bptt=BPTT,
                    batch_size=BATCH)
    run_dir = work / f"run.{size}.{os.getpid()}"
    words = [f"w{i}" for i in range(N_WORDS - N_SPECIAL)]
    trainer = Trainer(cfg, "mlm", run_dir, {}, ["xx"], words, [1] * len(words), log=lambda *_: None)
    try:
        model = TransformerModel(model_cfg, N_WORDS, 1, is_decoder=False)
        trainer.attach({"model": model}, MLMNet(model), {})
        probs = parse_keep_rand(cfg.word_mask_keep_rand)
        lengths = torch.full((BATCH,), BPTT)

        def step(x):
            x, y, pred = mask_out(x, trainer.rng, N_WORDS, cfg.word_pred, probs)
            with trainer.autocast():
                logits = trainer.net(x, lengths, None, pred)
            trainer.optimize(F.cross_entropy(logits.float(), y))

        timed = _timed_steps(step, np.load(_data(size, work)))
    finally:
        trainer.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    return _result(size, timed, model)


class BareMLM(nn.Module):
    """The same Transformer written with torch.nn's building blocks."""

    def __init__(self, dim: int, n_layers: int):
        super().__init__()
        self.tokens = nn.Embedding(N_WORDS, dim, padding_idx=PAD)
        self.positions = nn.Embedding(BPTT, dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        layer = nn.TransformerEncoderLayer(dim, N_HEADS, 4 * dim, dropout=0.1, activation="gelu",
                                           layer_norm_eps=LN_EPS, batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.out_bias = nn.Parameter(torch.zeros(N_WORDS))

    def forward(self, x, pred_mask):
        h = self.norm(self.tokens(x) + self.positions(torch.arange(x.size(1))))
        h = self.encoder(F.dropout(h, 0.1, self.training), src_key_padding_mask=x == PAD)
        return F.linear(h[pred_mask], self.tokens.weight, self.out_bias)


def reference(size: str, work: Path) -> dict:
    p = SIZES[size]
    torch.manual_seed(0)
    model = BareMLM(p["dim"], p["n_layers"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(x):
        pred = torch.rand(x.shape) < 0.15
        pred[:, 0] = False
        y = x[pred]
        kind = torch.rand(len(y))  # 80% MASK, 10% kept, 10% a random word
        new = torch.where(kind < 0.8, torch.full_like(y, MASK), y)
        new = torch.where(kind >= 0.9, torch.randint(0, N_WORDS, y.shape), new)
        x = x.masked_scatter(pred, new)
        loss = F.cross_entropy(model(x, pred), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    timed = _timed_steps(step, np.load(_data(size, work)))
    return _result(size, timed, model)


CASES = {"mlm_step": {"relm": relm, "reference": reference}}


def project(rows: list[dict], n: float) -> dict | None:
    """Hours for one epoch of n sentences (TOKENS_PER_SENTENCE tokens each) with the paper's model (dim 1024,
    6 layers): seconds per token linear in flops_per_token through the two measured model sizes; peak MB linear in
    the parameter count (same batch and bptt)."""
    out = []
    for impl in sorted({r["impl"] for r in rows}):
        rs = sorted((r for r in rows if r["impl"] == impl), key=lambda r: r["flops_per_token"])
        if len({r["flops_per_token"] for r in rs}) < 2:
            continue
        a, b = fit_linear([r["flops_per_token"] for r in rs], [r["timed_s"] / r["items"] for r in rs])
        am, bm = fit_linear([r["parameters"] for r in rs], [r["peak_mb"] for r in rs])
        d = PAPER_MODEL
        s_per_token = a + b * flops_per_token(d.dim, d.n_layers)
        out.append(dict(case="mlm_step", impl=impl, seconds=s_per_token * n * TOKENS_PER_SENTENCE,
                        peak_mb=am + bm * parameters(d.dim, d.n_layers), s_per_token=s_per_token))
    if not out:
        return None
    return {"model": f"one epoch, {TOKENS_PER_SENTENCE} tokens/sentence, dim {PAPER_MODEL.dim} x "
                     f"{PAPER_MODEL.n_layers} layers: s/token linear in FLOPs/token, peak MB linear in parameters",
            "projections": out}


def parameters(dim: int, n_layers: int) -> int:
    """Parameters of the model (relm's or the reference) with this benchmark's vocabulary and positions, counted
    without building it: embeddings (tied output), positions, embedding LayerNorm, per layer 4 attention projections,
    the feed-forward block and 2 LayerNorms, output bias."""
    layer = 4 * (dim * dim + dim) + (dim * 4 * dim + 4 * dim) + (4 * dim * dim + dim) + 2 * 2 * dim
    return N_WORDS * dim + BPTT * dim + 2 * dim + n_layers * layer + N_WORDS
