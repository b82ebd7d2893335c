"""The training loop shared by the MLM and UNMT trainers (XLM train.py and src/trainer.py).

`Trainer` owns what does not depend on the objective: seeding, the optimizer and its learning-rate schedule,
skipping non-finite losses, iterations and epochs counted in sentences, and the evaluation bookkeeping
(best-<metric>.pt, stopping criterion, metric history). Devices, AMP and DDP are set up by relm.train.devices; the run
directory, resume checkpoints and signals are handled by relm.train.resume.
"""
from __future__ import annotations

import json
import math
import random
import signal
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from relm.config import to_dict
from relm.errors import NonFiniteLossError
from relm.files import atomic_torch_save, atomic_write_text
from relm.model.checkpoint import safe_load, save_model
from relm.train import devices
from relm.train.devices import AMP_NAMES
from relm.train.metrics import metric_spec, parse_stopping
from relm.train.resume import (CHECKPOINT, EXIT_REQUEUE, Interrupted, Signals, exit_status, gather_rank_states,
                               keep_previous, plain, prepare_run_dir, restore_rank_state, write_delivered)
from relm.train.schedule import lr_at


class Trainer:
    """One training run. Usage: Trainer(...) -> attach(models, net, iterators) -> run(iteration, evaluate)
    -> finish(out, metrics_out) -> close(). `iteration()` does one XLM iteration (calls `optimize` once per step),
    `evaluate()` returns {metric: value} (called on the master only). `inputs` are the paths the run consumes
    ({"vocab", "train": {lang: corpus}, ..., "init", "extension"}): their content is part of the run's identity
    (relm.train.resume); `out` is where finish() will write the model (a finished run whose delivered model is
    missing there is trained again)."""

    def __init__(self, cfg, kind: str, run_dir: str | Path, inputs: dict, langs: list[str], words: list[str],
                 counts: list[int], metric_names: list[str] | None = None, log=print, out: str | None = None):
        self.cfg, self.kind = cfg, kind
        self.langs, self.words, self.counts = list(langs), list(words), list(counts)
        self.run_dir = Path(run_dir)
        self._log = log
        rc = cfg.run
        self.dist, self.device, self.amp_dtype = devices.setup(rc)
        self.seed = rc.seed + 1000 * self.dist.rank  # every rank draws different batches, masks and noise
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(rc.seed)  # same model init on every rank (DDP broadcasts rank 0's anyway)
        self.rng = np.random.RandomState(self.seed % 2**32)  # masking, noise, order of steps

        self.validation = [metric_spec(m.strip()) for m in rc.validation_metrics.split(",") if m.strip()]
        self.stopping = parse_stopping(rc.stopping_criterion)
        for m in [m for m, _ in self.validation] + ([self.stopping[0]] if self.stopping else []):
            if metric_names is not None and m not in metric_names:
                raise ValueError(f"metric {m!r} (run.validation_metrics / run.stopping_criterion) is not computed by "
                                 f"this run; available: {', '.join(sorted(metric_names)) or 'none'}")

        # training state (all of it goes into checkpoint.pt)
        self.step = self.epoch = self.n_iter = self.n_sentences = 0
        self.best: dict[str, float] = {}
        self.best_stop: float | None = None
        self.bad_epochs = 0
        self.history: list[dict] = []
        self.stopped: list[str] = []  # why the run finished: criterion, max_epochs, max_steps
        self.nan_run = self.nan_total = 0
        self.elapsed = self.cpu_elapsed = 0.0  # wall and CPU seconds of earlier sessions of this run
        self.epoch_loss: dict[str, list[float]] = {}  # name -> [sum, count] of the training losses of this epoch
        self.done = False
        self.last_ckpt_step = 0
        self.config = to_dict(cfg)
        self.signals: Signals | None = None  # installed by attach()
        self._stats: dict[str, list[float]] = {}
        self._words = 0
        self._t_log = self._t0 = time.time()
        self._c0 = time.process_time()
        start = prepare_run_dir(self.run_dir, cfg, kind, json.loads(json.dumps(inputs, default=str)), self.dist,
                                self.log, words=self.words, out=out)
        self.resume, self.inputs, self._lock = start.resume, start.inputs, start.lock

    def close(self) -> None:
        """Release the run directory (its lock); the process ending does it too."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # --- logging
    def log(self, msg: str) -> None:
        if self.dist.is_master:
            self._log(msg)

    def record(self, name: str, loss: float, n_words: int = 0) -> None:
        self._stats.setdefault(name, []).append(loss)
        acc = self.epoch_loss.setdefault(name, [0.0, 0])
        acc[0] += loss
        acc[1] += 1
        self._words += n_words

    def seed_for(self, *parts) -> int:
        """A 31-bit seed derived from this rank's seed and `parts` (ints, strings), stable across processes."""
        return zlib.crc32(json.dumps((self.seed, *parts)).encode()) & 0x7FFFFFFF

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    # --- models and optimizer
    def attach(self, models: dict[str, nn.Module], net: nn.Module, iterators: dict) -> None:
        """models: the modules stored in checkpoints ({"model"} or {"encoder", "decoder"}); net: a module holding them
        whose forward computes the training logits (what DDP wraps); parameters with requires_grad are optimized."""
        self.models, self.iterators = models, iterators
        if self.resume:
            for name, m in models.items():
                m.load_state_dict(self.resume[name])
        net.to(self.device)
        self.params = [p for p in net.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameters")
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=ids, find_unused_parameters=True)
        self.net = net
        o = self.cfg.optim
        lr_at(o, 1)  # validates the optimizer name
        self.opt = torch.optim.Adam(self.params, lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        if self.resume:
            self.opt.load_state_dict(self.resume["optimizer"])
            if self.scaler is not None and self.resume.get("scaler"):
                self.scaler.load_state_dict(self.resume["scaler"])
            self._load_state(self.resume)
        else:
            torch.manual_seed(self.seed)  # dropout differs between ranks from here on
        self.signals = Signals()
        n_all = sum(p.numel() for m in models.values() for p in {id(q): q for q in m.parameters()}.values())
        self.log(f"{self.kind}: {n_all:,} parameters, {sum(p.numel() for p in self.params):,} trainable; "
                 f"device {self.device}, world {self.dist.world}, amp {AMP_NAMES[self.amp_dtype]}, "
                 f"threads {torch.get_num_threads()}")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def optimize(self, loss: torch.Tensor) -> bool:
        """Backward + clip + step with the scheduled learning rate. A non-finite loss (or gradient norm) skips the
        update; max_nan_steps consecutive ones raise NonFiniteLossError. Returns whether an update was made."""
        finite = torch.isfinite(loss.detach()).float()
        if self.dist.world > 1:  # every rank must take the same decision
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        self.opt.zero_grad(set_to_none=True)
        if finite.item() < 1:
            return self._skip("loss")
        lr = lr_at(self.cfg.optim, self.step + 1)
        for g in self.opt.param_groups:
            g["lr"] = lr
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        clip = self.cfg.optim.clip_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf"))
        if self.scaler is not None:
            self.scaler.step(self.opt)  # skips by itself on inf/NaN gradients and lowers the scale
            self.scaler.update()
        else:
            if not torch.isfinite(norm):
                self.opt.zero_grad(set_to_none=True)
                return self._skip("gradient")
            self.opt.step()
        self.step += 1
        self.nan_run = 0
        return True

    def _skip(self, what: str) -> bool:
        self.nan_run += 1
        self.nan_total += 1
        self.log(f"WARNING step {self.step + 1}: non-finite {what}, update skipped "
                 f"({self.nan_run} in a row, {self.nan_total} in total)")
        if self.nan_run >= self.cfg.run.max_nan_steps:
            last = (f"the last good checkpoint is {self.ckpt_path} (step {self.last_ckpt_step})"
                    if self.ckpt_path.is_file() else f"no checkpoint was written yet in {self.run_dir}")
            raise NonFiniteLossError(f"{self.nan_run} consecutive non-finite losses/gradients at step {self.step} "
                                     f"(run.max_nan_steps = {self.cfg.run.max_nan_steps}); {last}. Lower the learning "
                                     f"rate or use another amp setting.")
        return False

    # --- state
    def _load_state(self, ck: dict) -> None:
        t = ck["trainer"]
        for k in ("step", "epoch", "n_iter", "n_sentences", "bad_epochs", "nan_total", "last_ckpt_step"):
            setattr(self, k, int(t[k]))
        self.best, self.best_stop, self.elapsed = dict(t["best"]), t["best_stop"], float(t["elapsed"])
        self.history, self.done = list(t["history"]), bool(t["done"])
        self.cpu_elapsed, self.epoch_loss = float(t.get("cpu", 0.0)), dict(t.get("epoch_loss") or {})
        self.stopped = list(t.get("stopped") or [])
        restore_rank_state(ck["ranks"], self.dist, self.device, self.rng, self.iterators, self.log)

    def save_checkpoint(self) -> None:
        """Resume checkpoint (all ranks must call it: random states of every rank are gathered)."""
        ranks = gather_rank_states(self.dist, self.device, self.rng, self.iterators)
        if self.dist.is_master:
            trainer = {"step": self.step, "epoch": self.epoch, "n_iter": self.n_iter, "n_sentences": self.n_sentences,
                       "best": self.best, "best_stop": self.best_stop, "bad_epochs": self.bad_epochs,
                       "history": self.history, "nan_total": self.nan_total, "elapsed": self.time(),
                       "cpu": self.cpu_time(), "epoch_loss": self.epoch_loss, "done": self.done, "stopped": self.stopped, "last_ckpt_step": self.step}
            keep_previous(self.ckpt_path)
            save_model(self.ckpt_path, self.kind, self.models, self.cfg.model, self.langs, self.words, self.counts,
                       self.config, optimizer=self.opt.state_dict(),
                       scaler=self.scaler.state_dict() if self.scaler is not None else None,
                       trainer=plain(trainer), ranks=ranks, inputs=self.inputs)
        self.last_ckpt_step = self.step
        self.dist.barrier()

    def save_weights(self, path: Path, **extra) -> None:
        save_model(path, self.kind, self.models, self.cfg.model, self.langs, self.words, self.counts, self.config,
                   **plain(extra))

    def time(self) -> float:
        return self.elapsed + time.time() - self._t0

    def cpu_time(self) -> float:
        """CPU seconds of this process (all its threads) over every session of the run."""
        return self.cpu_elapsed + time.process_time() - self._c0

    # --- the loop
    def max_steps_reached(self) -> bool:
        return self.cfg.run.max_steps > 0 and self.step >= self.cfg.run.max_steps

    def end_iteration(self) -> None:
        self.n_iter += 1
        every = self.cfg.run.log_every
        if every > 0 and self.n_iter % every == 0:
            self._log_stats()
        sig = self.signals.received(self.dist)
        if sig:
            self.save_checkpoint()
            code = exit_status(sig)
            self.log(f"signal {signal.Signals(sig).name}: checkpoint written at step {self.step} "
                     f"({self.ckpt_path}); exiting with status {code} "
                     + ("to be restarted" if code == EXIT_REQUEUE else "(stopped by the user; run again to resume)"))
            raise Interrupted(sig)
        if self.cfg.run.checkpoint_every > 0 and self.step - self.last_ckpt_step >= self.cfg.run.checkpoint_every:
            self.save_checkpoint()

    def _log_stats(self) -> None:
        now = time.time()
        parts = [f"{k} {np.mean(v):.4f}" for k, v in sorted(self._stats.items()) if v]
        wps = self._words / max(now - self._t_log, 1e-9)
        self.log(f"epoch {self.epoch} step {self.step} iter {self.n_iter} sentences {self.n_sentences} | "
                 + " | ".join(parts) + f" | {wps:.0f} words/s | lr {self.opt.param_groups[0]['lr']:.3g}")
        self._stats, self._words, self._t_log = {}, 0, now

    def run(self, iteration, evaluate) -> None:
        try:
            if self.done:
                self.log("training had already finished; writing the outputs")
            while not self.done:
                while self.n_sentences < self.cfg.run.epoch_size and not self.max_steps_reached():
                    iteration()
                    self.end_iteration()
                self.end_epoch(evaluate)
        finally:
            if self.signals is not None:
                self.signals.restore()

    def end_epoch(self, evaluate) -> None:
        metrics = [plain(evaluate()) if self.dist.is_master else None]
        if self.dist.world > 1:
            dist.broadcast_object_list(metrics, src=0)
        metrics = metrics[0]
        train = {f"train_{k}_loss": total / n for k, (total, n) in sorted(self.epoch_loss.items()) if n}
        record = {"epoch": self.epoch, "step": self.step, "time_s": round(self.time(), 2),
                  "cpu_s": round(self.cpu_time(), 2), **train, **metrics}
        self.epoch_loss = {}
        self.history.append(record)
        self.log(f"end of epoch {self.epoch} (step {self.step}): "
                 + " ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        for name, smaller in self.validation:
            v = metrics[name]
            b = self.best.get(name)
            if not math.isfinite(v):  # a NaN/inf model is never the best one
                self.log(f"WARNING: {name} is {v}: not a candidate for the best model")
            elif b is None or (v < b if smaller else v > b):
                self.best[name] = v
                if self.dist.is_master:
                    self.save_weights(self.run_dir / f"best-{name}.pt", step=self.step, epoch=self.epoch,
                                      metrics=record)
                self.log(f"new best {name}: {v:.4g}")
        stopped = []
        if self.stopping:  # XLM src/trainer.py end_epoch; a NaN/inf value counts as no improvement
            name, smaller, patience = self.stopping
            v = metrics[name]
            if math.isfinite(v) and (self.best_stop is None or (v < self.best_stop if smaller else v > self.best_stop)):
                self.best_stop, self.bad_epochs = v, 0
            else:
                self.bad_epochs += 1
                best = "none yet" if self.best_stop is None else f"{self.best_stop:.4g}"
                self.log(f"no improvement of {name} for {self.bad_epochs} epoch(s) (best {best})")
                if self.bad_epochs > patience:
                    self.log(f"stopping criterion {name},{patience} reached")
                    stopped.append("criterion")
        self.epoch += 1
        self.n_sentences = 0
        if self.epoch >= self.cfg.run.max_epochs:
            self.log(f"max_epochs {self.cfg.run.max_epochs} reached")
            stopped.append("max_epochs")
        if self.max_steps_reached():
            self.log(f"max_steps {self.cfg.run.max_steps} reached")
            stopped.append("max_steps")
        self.stopped, self.done = stopped, bool(stopped)
        self.save_checkpoint()

    def finish(self, out: str | None, metrics_out: str | None) -> dict:
        """Write the history to metrics_out (JSON lines) and the best model (first validation metric, else the last)
        to out."""
        best_file = None
        if self.validation:
            f = self.run_dir / f"best-{self.validation[0][0]}.pt"
            best_file = f if f.is_file() else None
        if self.dist.is_master:
            if metrics_out:
                atomic_write_text(metrics_out, "".join(json.dumps(r) + "\n" for r in self.history))
            if out:
                if best_file is not None:
                    atomic_torch_save(safe_load(best_file), out)
                else:
                    self.save_weights(Path(out), step=self.step, epoch=self.epoch,
                                      metrics=self.history[-1] if self.history else {})
                self.log(f"model written to {out} ({'from ' + best_file.name if best_file else 'last weights'})")
            write_delivered(self.run_dir, out, metrics_out, self.step)
        self.dist.barrier()
        self.close()
        return {"step": self.step, "epoch": self.epoch, "best": dict(self.best),
                "last": self.history[-1] if self.history else {}, "history": list(self.history),
                "best_file": str(best_file) if best_file else None, "out": out, "nan_steps": self.nan_total}


def ce_stats(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, int, int]:
    """(sum of cross-entropy, number of correct argmax, number of targets) for evaluation."""
    logits = logits.float()
    loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
    return loss, int((logits.argmax(-1) == y).sum()), int(y.numel())
