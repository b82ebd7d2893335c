"""Greedy and beam-search decoding with XLM's semantics, using the decoder's incremental cache.

Outputs start with BOS (= EOS id 1), end with EOS 1 and are padded with 2; lengths count BOS and EOS. Each new token
costs one decoder step (keys/values of earlier positions come from the cache); `use_cache=False` re-runs the decoder
over the whole prefix at every step instead (same tokens; for checks and bench/cases/generate.py). Beam search is XLM's
`generate_beam`: 2*beam candidates per step, finished hypotheses scored sum_logprob / len**length_penalty (len counts
BOS, not EOS), and a hypothesis that reaches max_len is closed with EOS in place of its last word.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from relm.model.transformer import TransformerModel, reorder_cache


@dataclass(frozen=True)
class LengthLimit:
    """Longest generated sequence (BOS and EOS counted) = a * source length + b, capped at the model's positions.
    per_batch: one limit for the batch from its longest source (XLM); else one per sentence, so that a line's output
    does not depend on its batch mates."""

    a: float
    b: int
    per_batch: bool = True

    def __call__(self, src_len: torch.Tensor, max_positions: int):
        if self.per_batch:
            return min(int(self.a * src_len.max().item() + self.b), max_positions)
        return (src_len.double() * self.a + self.b).long().clamp(max=max_positions)


# The three places that generate, with the original's limits (XLM/RE-LM src/trainer.py bt_step and
# src/evaluation/evaluator.py evaluate_mt); `relm translate` takes a and b from TranslateConfig.
BACK_TRANSLATION = LengthLimit(1.3, 5)
VALIDATION = LengthLimit(1.5, 10)


def translation_limit(a: float, b: int) -> LengthLimit:
    return LengthLimit(a, b, per_batch=False)


def _max_lengths(max_len, bs: int, device) -> torch.Tensor:
    m = torch.as_tensor(max_len, dtype=torch.long, device=device).expand(bs).clone() if not torch.is_tensor(max_len) \
        else max_len.to(device=device, dtype=torch.long).clone()
    if m.shape != (bs,):
        raise ValueError(f"max_len must be an int or a tensor of {bs} lengths, got shape {tuple(m.shape)}")
    return m.clamp_(min=2)  # room for BOS and EOS


class _eval_mode:
    """Run the decoder in eval mode (no dropout) and restore its previous mode afterwards."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _step(decoder: TransformerModel, prefix, total_len, tgt_lang_id, src_enc, src_len, cache) -> torch.Tensor:
    """One decoder step -> scores of the next token [bs, n_words] (float32). prefix [bs, cur]: the tokens so far;
    with a cache only the newest one is fed, without (None) the whole prefix is recomputed."""
    x = prefix[:, -1:] if cache is not None else prefix
    langs = torch.full_like(x, tgt_lang_id)
    h = decoder(x, total_len, langs, causal=True, src_enc=src_enc, src_len=src_len, cache=cache)
    return decoder.logits(h[:, -1]).float()


@torch.no_grad()
def generate_greedy(decoder: TransformerModel, src_enc, src_len, tgt_lang_id: int, max_len, use_cache: bool = True):
    """Greedy decoding (XLM `generate`). src_enc [bs, slen, dim], src_len [bs]; max_len int or [bs].
    Returns (tokens [bs, L], lengths [bs])."""
    bs, device = src_len.size(0), src_enc.device
    eos, pad = decoder.eos_index, decoder.pad_index
    src_len = src_len.to(device)
    limits = _max_lengths(max_len, bs, device)
    total = int(limits.max())
    out = torch.full((bs, total), pad, dtype=torch.long, device=device)
    out[:, 0] = eos
    gen_len = torch.ones(bs, dtype=torch.long, device=device)
    unfinished = torch.ones(bs, dtype=torch.bool, device=device)
    cache = {"slen": 0} if use_cache else None
    cur = 1
    with _eval_mode(decoder):
        while cur < total:
            scores = _step(decoder, out[:, :cur], gen_len, tgt_lang_id, src_enc, src_len, cache)
            nxt = scores.argmax(-1)
            nxt = torch.where(limits == cur + 1, torch.full_like(nxt, eos), nxt)  # sentence reaches its max length
            out[:, cur] = torch.where(unfinished, nxt, torch.full_like(nxt, pad))
            gen_len += unfinished.long()
            unfinished &= nxt != eos
            cur += 1
            if not unfinished.any():
                break
    return out[:, :cur], gen_len


class BeamHypotheses:
    """The n best finished hypotheses of one sentence (XLM semantics)."""

    def __init__(self, n_hyp: int, max_len: int, length_penalty: float, early_stopping: bool):
        self.max_len = max_len - 1  # without BOS
        self.n_hyp, self.length_penalty, self.early_stopping = n_hyp, length_penalty, early_stopping
        self.hyp: list[tuple[float, torch.Tensor]] = []
        self.worst_score = 1e9

    def add(self, hyp: torch.Tensor, sum_logprobs: float) -> None:
        score = sum_logprobs / len(hyp) ** self.length_penalty
        if len(self.hyp) < self.n_hyp or score > self.worst_score:
            self.hyp.append((score, hyp))
            if len(self.hyp) > self.n_hyp:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.hyp))
                del self.hyp[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float) -> bool:
        if len(self.hyp) < self.n_hyp:
            return False
        if self.early_stopping:
            return True
        return self.worst_score >= best_sum_logprobs / self.max_len**self.length_penalty


@torch.no_grad()
def generate_beam(decoder: TransformerModel, src_enc, src_len, tgt_lang_id: int, beam_size: int,
                  length_penalty: float = 1.0, early_stopping: bool = False, max_len=200, use_cache: bool = True):
    """Beam search (XLM `generate_beam`). Returns (tokens [bs, L], lengths [bs]) like `generate_greedy`."""
    assert beam_size >= 1
    bs, device = src_len.size(0), src_enc.device
    eos, pad, n_words = decoder.eos_index, decoder.pad_index, decoder.n_words
    limits = _max_lengths(max_len, bs, device).tolist()
    total = max(limits)
    # every sentence gets beam_size rows: row = sent * beam_size + beam
    src_enc = src_enc.repeat_interleave(beam_size, dim=0)
    src_len = src_len.to(device).repeat_interleave(beam_size, dim=0)
    nb = bs * beam_size
    generated = torch.full((nb, total), pad, dtype=torch.long, device=device)
    generated[:, 0] = eos
    hyps = [BeamHypotheses(beam_size, limits[i], length_penalty, early_stopping) for i in range(bs)]
    beam_scores = torch.zeros(bs, beam_size, device=device)
    beam_scores[:, 1:] = -1e9  # at the start all beams are identical: keep only the first
    beam_scores = beam_scores.view(-1)
    done = [False] * bs
    cache = {"slen": 0} if use_cache else None
    cur = 1
    with _eval_mode(decoder):
        while cur < total:
            lengths = torch.full((nb,), cur, dtype=torch.long, device=device)
            scores = _step(decoder, generated[:, :cur], lengths, tgt_lang_id, src_enc, src_len, cache)
            scores = F.log_softmax(scores, dim=-1)
            scores = (scores + beam_scores[:, None]).view(bs, beam_size * n_words)
            top_scores, top_ids = torch.topk(scores, 2 * beam_size, dim=1, largest=True, sorted=True)
            top_scores, top_ids = top_scores.tolist(), top_ids.tolist()
            next_beam = []  # (score, word, row) for every row
            for s in range(bs):
                done[s] = done[s] or hyps[s].is_done(max(top_scores[s]))
                if done[s]:
                    next_beam.extend([(0.0, pad, 0)] * beam_size)
                    continue
                last_step = cur + 1 >= limits[s]
                sent_beam = []
                for idx, value in zip(top_ids[s], top_scores[s]):
                    beam_id, word = divmod(idx, n_words)
                    row = s * beam_size + beam_id
                    if word == eos or last_step:
                        hyps[s].add(generated[row, :cur].clone(), value)
                    else:
                        sent_beam.append((value, word, row))
                    if len(sent_beam) == beam_size:
                        break
                if last_step:
                    done[s] = True  # per-sentence max length reached
                if not sent_beam:
                    sent_beam = [(0.0, pad, 0)] * beam_size
                next_beam.extend(sent_beam)
            beam_scores = torch.tensor([b[0] for b in next_beam], device=device)
            words = torch.tensor([b[1] for b in next_beam], dtype=torch.long, device=device)
            rows = torch.tensor([b[2] for b in next_beam], dtype=torch.long, device=device)
            generated = generated[rows]
            generated[:, cur] = words
            if cache is not None:
                reorder_cache(cache, rows)
            cur += 1
            if all(done):
                break

    best = [max(h.hyp, key=lambda t: t[0])[1] for h in hyps]
    lengths = torch.tensor([len(b) + 1 for b in best], dtype=torch.long, device=device)  # + EOS
    out = torch.full((bs, int(lengths.max())), pad, dtype=torch.long, device=device)
    for i, b in enumerate(best):
        out[i, : len(b)] = b
        out[i, len(b)] = eos
    return out, lengths
