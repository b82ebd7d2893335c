"""Evaluation metrics of the trainers: which metrics a run computes, their direction, the stopping criterion,
perplexity and accuracy from summed cross-entropy (XLM src/evaluation/evaluator.py). Torch-free: the config check
uses it before any job starts."""
from __future__ import annotations

import math

SPLITS = ("valid", "test")


def mlm_metric_names(eval_langs: dict[str, list[str]]) -> list[str]:
    """{split: evaluated languages} -> {split}_{lang}_mlm_{ppl,acc}, plus {split}_mlm_{ppl,acc} (the mean) when a
    split has several languages."""
    names = []
    for split, langs in eval_langs.items():
        for lg in langs:
            names += [f"{split}_{lg}_mlm_ppl", f"{split}_{lg}_mlm_acc"]
        if len(langs) > 1:
            names += [f"{split}_mlm_ppl", f"{split}_mlm_acc"]
    return names


def mt_directions(bt_steps: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """Directions UNMT evaluates: l1->l2 and l2->l3 of every back-translation step l1-l2-l3 (XLM)."""
    return sorted({(a, b) for s in bt_steps for a, b in ((s[0], s[1]), (s[1], s[2]))})


def mt_metric_names(eval_dirs: list[tuple[str, str, str]], bleu: bool) -> list[str]:
    """(split, l1, l2) evaluated -> {split}_{l1}-{l2}_mt_{ppl,acc[,bleu]}."""
    kinds = ["ppl", "acc"] + (["bleu"] if bleu else [])
    return [f"{split}_{a}-{b}_mt_{k}" for split, a, b in eval_dirs for k in kinds]


def config_metric_names(cfg) -> list[str]:
    """Metrics of a run with this MLMConfig / UNMTConfig when both valid and test sets are given."""
    if hasattr(cfg, "bt_steps"):
        dirs = mt_directions([tuple(s.split("-")) for s in cfg.bt_steps])
        return mt_metric_names([(split, a, b) for split in SPLITS for a, b in dirs], cfg.eval_bleu)
    langs = list(cfg.eval_langs or cfg.langs)
    return mlm_metric_names({split: langs for split in SPLITS})


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
    if int(n) < 0:
        raise ValueError(f"bad run.stopping_criterion {spec!r}: N (epochs without improvement) must be >= 0")
    metric, smaller = metric_spec(name.strip())
    return metric, smaller, int(n)


def ppl_acc(loss_sum: float, correct: int, n: int) -> tuple[float, float]:
    """Perplexity and accuracy (%) from ce_stats sums; (1e9, 0) without targets."""
    if n == 0:
        return 1e9, 0.0
    return math.exp(min(loss_sum / n, 100.0)), 100.0 * correct / n
