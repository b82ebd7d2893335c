"""Evaluation metrics of the trainers: metric names and their direction, the stopping criterion, perplexity and
accuracy from summed cross-entropy (XLM src/evaluation/evaluator.py)."""
from __future__ import annotations

import math

import torch


def metric_spec(name: str) -> tuple[str, bool]:
    """'_valid_x_mlm_ppl' -> ('valid_x_mlm_ppl', smaller_is_better=True) (XLM src/trainer.py)."""
    return name.lstrip("_"), name.startswith("_")


def parse_stopping(spec: str) -> tuple[str, bool, int] | None:
    """'metric,N' -> (metric, smaller_is_better, N); empty -> None."""
    if not spec.strip():
        return None
    name, _, n = spec.partition(",")
    if not name.strip() or not n.strip().lstrip("-").isdigit():
        raise ValueError(f"bad run.stopping_criterion {spec!r}: expected 'metric,N' (e.g. '_valid_en_mlm_ppl,10')")
    metric, smaller = metric_spec(name.strip())
    return metric, smaller, int(n)


def ce_stats(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, int, int]:
    """(sum of cross-entropy, number of correct argmax, number of targets) for evaluation."""
    logits = logits.float()
    loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
    return loss, int((logits.argmax(-1) == y).sum()), int(y.numel())


def ppl_acc(loss_sum: float, correct: int, n: int) -> tuple[float, float]:
    """Perplexity and accuracy (%) from ce_stats sums; (1e9, 0) without targets."""
    if n == 0:
        return 1e9, 0.0
    return math.exp(min(loss_sum / n, 100.0)), 100.0 * correct / n
