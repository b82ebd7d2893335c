"""Where the time of UNMT training goes: the real `train_unmt` (denoising + back-translation, no evaluation) on
generated corpora, under cProfile, with the time split into PyTorch's own compute and relm's Python around it.

    python -m bench.profile_unmt [--dim 128] [--layers 2] [--steps 40] [--work DIR]
    python -m bench.profile_unmt --from-run models/lx-hx/relm/seed0/unmt [--root WORKFLOW_DIR] [--steps 40]

Prints the share of each group (own time of the functions by module), the cumulative share of the phases of a round
(back-translation generation, noise, the rest: forward, backward, optimizer) and the top functions by own time. The demo
model is dim 128, 2 layers, 4 heads (config/config.yaml); --dim 512 --layers 6 --heads 8 is the paper's size class.
From a random start greedy outputs end early, so generation's share is understated; --from-run profiles a trained
UNMT model of a workflow run instead (its model.pt, settings and corpora), whose back-translations have full length.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import tempfile
import time
from pathlib import Path

import torch
import yaml

from bench.harness import synthetic_text
from relm.config import ModelConfig, UNMTConfig, from_dict
from relm.data.corpus import binarize
from relm.text.vocab import count_vocab
from relm.train.unmt import train_unmt

GROUPS = (  # first match wins; "torch" = PyTorch's operators, autograd and optimizer (C++ or its Python)
    ("relm noise", "relm/data/noise"),
    ("relm batches", "relm/data/"),
    ("relm generation loop", "relm/generate"),
    ("relm model (Python)", "relm/model/"),
    ("relm trainer", "relm/train/"),
    ("torch", "torch"),
    ("numpy", "numpy"),
)


def group_of(func: tuple) -> str:
    filename, _, name = func
    for group, needle in GROUPS:
        if needle in filename or (filename == "~" and needle in name):
            return group
    if filename == "~":  # built-in: methods of torch tensors show as {method 'x' of 'torch._C.TensorBase' objects}
        return "torch" if "torch" in name or "Tensor" in name else "numpy" if "numpy" in name else "other built-ins"
    return "other Python"


PHASES = {  # phase -> (file, function) whose cumulative time it is
    "back-translation generation (greedy, no gradients)": ("relm/generate", "generate_greedy"),
    "denoising noise": ("relm/data/noise", "add_noise"),
}


def corpora(work: Path, n_lines: int) -> tuple[Path, dict, dict]:
    work.mkdir(parents=True, exist_ok=True)
    texts = {lg: synthetic_text(work / f"train.{lg}", n_lines, seed=seed, vocab_words=3000)
             for lg, seed in (("hx", 1), ("lx", 2))}
    vocab = work / "vocab"
    if not vocab.exists():
        count_vocab(list(texts.values()), vocab, log=lambda *_: None)
    train, valid = {}, {}
    for lg, text in texts.items():
        valid_text = synthetic_text(work / f"valid.{lg}", 20, seed=10)
        for split, src, out in (("train", text, train), ("valid", valid_text, valid)):
            path = work / f"{split}.{lg}.json"
            if not path.exists():
                binarize(src, vocab, path, lg, log=lambda *_: None)
            out[lg] = str(path)
    return vocab, train, valid


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40, help="optimizer updates (one iteration = 4 of them)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--from-run", help="a workflow's UNMT run directory: profile its trained model.pt")
    ap.add_argument("--root", default=".", help="the workflow directory the run's input paths are relative to")
    a = ap.parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="relm-profile-")).resolve()
    init = None
    if a.from_run:
        os.chdir(a.root)  # the workflow's paths (also those inside corpus files) are relative to it
        run = Path(a.from_run)
        inputs = json.loads((run / "inputs.json").read_text())
        vocab = inputs["vocab"]["path"]
        train, valid = ({lg: e["path"] for lg, e in inputs[split].items()} for split in ("train", "valid"))
        cfg = from_dict(UNMTConfig, yaml.safe_load((run / "config.yaml").read_text()))
        cfg.eval_bleu, init = False, str(run / "model.pt")
        a.dim, a.layers, a.heads = cfg.model.dim, cfg.model.n_layers, cfg.model.n_heads
    else:
        vocab, train, valid = corpora(work / "data", 5000)
        cfg = UNMTConfig(model=ModelConfig(dim=a.dim, n_layers=a.layers, n_heads=a.heads, dropout=0.0,
                                           attention_dropout=0.0, pre_norm=True),
                         ae_steps=["hx", "lx"], bt_steps=["hx-lx-hx", "lx-hx-lx"], tokens_per_batch=1000,
                         eval_bleu=False, lambda_ae="1")
    cfg.run.max_steps, cfg.run.epoch_size, cfg.run.checkpoint_every, cfg.run.log_every = a.steps, 10**9, 10**9, 10**9
    cfg.run.stopping_criterion, cfg.run.validation_metrics = "", ""  # no evaluation here
    run_dir = work / f"run-{a.dim}-{a.layers}-{time.time_ns()}"
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    train_unmt(cfg, str(run_dir), str(vocab), train, valid, init=init, log=lambda *_: None)
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    own: dict[str, float] = {}
    rows = []
    for func, (_, _, tottime, _, _) in stats.stats.items():
        g = group_of(func)
        own[g] = own.get(g, 0.0) + tottime
        rows.append((tottime, g, func))
    total = sum(own.values())
    start = f"trained model {init}" if init else "random start"
    print(f"UNMT from a {start}, dim {a.dim}, {a.layers} layers, {a.heads} heads, {a.steps} updates, torch threads "
          f"{torch.get_num_threads()}: {wall:.1f} s wall, {total:.1f} s profiled (cProfile adds overhead to Python "
          "calls; shares are of own time)")
    print("\n| group | own s | share |\n|---|--:|--:|")
    for g, t in sorted(own.items(), key=lambda kv: -kv[1]):
        print(f"| {g} | {t:.2f} | {100 * t / total:.1f}% |")
    cum = {name: 0.0 for name in PHASES}
    for (filename, _, name), (_, _, _, cumtime, _) in stats.stats.items():
        for phase, (needle, fn) in PHASES.items():
            if needle in filename and name == fn:
                cum[phase] += cumtime
    print("\n| phase of a round (cumulative time, torch included) | s | share |\n|---|--:|--:|")
    for phase, t in cum.items():
        print(f"| {phase} | {t:.2f} | {100 * t / total:.1f}% |")
    print(f"| the rest (forward, backward, optimizer, batches) | {total - sum(cum.values()):.2f} | "
          f"{100 * (total - sum(cum.values())) / total:.1f}% |")
    print("\n| top functions by own time | group | s |\n|---|---|--:|")
    for t, g, (filename, line, name) in sorted(rows, reverse=True)[: a.top]:
        where = name if filename == "~" else f"{Path(filename).name}:{line} {name}"
        print(f"| `{where}` | {g} | {t:.2f} |")


if __name__ == "__main__":
    main()
