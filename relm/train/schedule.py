"""Schedules: loss weights (lambda) over iterations and the learning rate over optimizer updates.

Lambda syntax (XLM): "0.5" is a constant; "0:1,100000:0.1,300000:0" is piecewise linear in the iteration
number between the points and constant outside them. Learning rate: `adam` is constant; the others warm up linearly
from warmup_init_lr to lr over warmup_updates updates, then `adam_inverse_sqrt` (XLM's, the original's) decays as
lr*sqrt(warmup/step), `adam_warmup_constant` stays at lr, and `adam_warmup_linear` falls linearly to 0 at
decay_updates (and stays there). A short run under inverse-sqrt ends with most of its learning rate gone while the
model still improves; the constant and linear schedules are relm's for such runs.
"""
from __future__ import annotations

import math


class Lambda:
    """A parsed lambda schedule; call it with the iteration number."""

    def __init__(self, spec: str | float | int, name: str = "lambda"):
        self.spec = str(spec).strip()
        self.points: list[tuple[int, float]] = []
        try:
            if ":" not in self.spec and "," not in self.spec:
                self.points = [(0, float(self.spec))]
            else:
                for part in self.spec.split(","):
                    it, _, value = part.partition(":")
                    if not it.strip().isdigit() or not value.strip():
                        raise ValueError
                    self.points.append((int(it), float(value)))
        except ValueError:
            raise ValueError(
                f"bad {name} schedule {self.spec!r}: expected a number or 'iter:value,iter:value,...'"
            ) from None
        if any(not math.isfinite(v) for _, v in self.points):
            raise ValueError(f"bad {name} schedule {self.spec!r}: values must be finite")
        its = [i for i, _ in self.points]
        if any(a >= b for a, b in zip(its, its[1:])):
            raise ValueError(f"bad {name} schedule {self.spec!r}: iterations must be strictly increasing")

    def __call__(self, it: int) -> float:
        pts = self.points
        if it <= pts[0][0]:
            return pts[0][1]
        for (i0, v0), (i1, v1) in zip(pts, pts[1:]):
            if i0 <= it < i1:
                return v0 + (v1 - v0) * (it - i0) / (i1 - i0)
        return pts[-1][1]

    def zero_from(self, it: int) -> bool:
        """Whether the value is 0 at iteration `it` and stays 0 forever after."""
        later = [v for i, v in self.points if i > it]
        return self(it) == 0 and all(v == 0 for v in later)

    def __repr__(self) -> str:
        return f"Lambda({self.spec!r})"


LR_SCHEDULES = ("adam", "adam_inverse_sqrt", "adam_warmup_constant", "adam_warmup_linear")  # optim.name


def lr_at(optim, step: int) -> float:
    """Learning rate of update number `step` (1-based: the first optimizer.step() is step 1)."""
    if optim.name not in LR_SCHEDULES:
        raise ValueError(f"unknown optimizer {optim.name!r} (known: {', '.join(LR_SCHEDULES)})")
    if optim.name == "adam":
        return optim.lr
    warmup = max(1, optim.warmup_updates)
    if step < warmup:
        return optim.warmup_init_lr + step * (optim.lr - optim.warmup_init_lr) / warmup
    if optim.name == "adam_inverse_sqrt":
        return optim.lr * math.sqrt(warmup) / math.sqrt(max(step, 1))
    if optim.name == "adam_warmup_linear":
        if optim.decay_updates <= warmup:
            raise ValueError(f"adam_warmup_linear needs decay_updates > warmup_updates, got {optim.decay_updates}")
        return optim.lr * max(0.0, (optim.decay_updates - step) / (optim.decay_updates - warmup))
    return optim.lr
