"""Training machinery shared by the MLM and UNMT trainers.

`Trainer` owns what does not depend on the objective: device and thread choice, seeding, AMP, DDP (torchrun or SLURM),
the optimizer and its learning-rate schedule, skipping non-finite losses, epochs counted in sentences, evaluation
bookkeeping (best-<metric>.pt, stopping criterion, metric history), resume checkpoints and signals.

Run directory: `config.yaml` (resolved config, written at start), `checkpoint.pt` (resume checkpoint, every
`checkpoint_every` updates and at every epoch end; the one before it is kept as `checkpoint.prev.pt`),
`best-<metric>.pt`.
Starting a run again on the same directory resumes from `checkpoint.pt` when its config and inputs equal the new ones;
otherwise the old run files are renamed to `*.stale-<n>` and training starts fresh.

Exit status 75 (EX_TEMPFAIL): SIGUSR1 or SIGTERM was received; a resume checkpoint was written at the next iteration
boundary and the job is meant to be retried/requeued (the next start resumes).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import random
import signal
import subprocess
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml

from relm.config import dump_yaml, to_dict
from relm.errors import CheckpointError, NonFiniteLossError
from relm.files import atomic_torch_save, atomic_write_text
from relm.model.checkpoint import safe_load, save_model
from relm.train.schedule import lr_at

EXIT_REQUEUE = 75
VOLATILE_RUN_KEYS = ("threads", "log_every", "checkpoint_every", "max_nan_steps")  # may change between resumes
RUN_FILES = ("checkpoint.pt", "checkpoint.prev.pt", "config.yaml")
AMP_NAMES = {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}


class Interrupted(SystemExit):
    """Raised after the resume checkpoint was written on SIGUSR1/SIGTERM; exits the process with status 75."""

    def __init__(self, signum: int):
        super().__init__(EXIT_REQUEUE)
        self.signum = signum


# --- processes and devices ---------------------------------------------------------------------------------------

@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def _slurm_master_addr() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if nodelist:
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return "127.0.0.1"


def dist_from_env() -> DistInfo:
    """torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or SLURM with more than one task (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID);
    anything else is a single process. For SLURM, MASTER_ADDR/MASTER_PORT are exported when missing."""
    env = os.environ
    if "RANK" in env and int(env.get("WORLD_SIZE", "1")) > 1:
        return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    ntasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1")
    if ntasks > 1 and "SLURM_PROCID" in env:
        info = DistInfo(int(env["SLURM_PROCID"]), ntasks, int(env.get("SLURM_LOCALID", "0")))
        env.setdefault("MASTER_ADDR", _slurm_master_addr())
        env.setdefault("MASTER_PORT", str(10001 + int(env.get("SLURM_JOB_ID", "0")) % 10000))
        env.update(RANK=str(info.rank), WORLD_SIZE=str(info.world), LOCAL_RANK=str(info.local_rank))
        return info
    return DistInfo()


def choose_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("run.device is 'cuda' but no CUDA device is available")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    if name != "cpu":
        raise ValueError(f"unknown run.device {name!r} (auto, cpu, cuda)")
    return torch.device("cpu")


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on GPUs that support it, fp16 on older GPUs, none on the CPU."""
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    table = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in table:
        raise ValueError(f"unknown run.amp {amp!r} (auto, bf16, fp16, none)")
    return table[amp]


# --- small helpers -----------------------------------------------------------------------------------------------

def metric_spec(name: str) -> tuple[str, bool]:
    """'_valid_x_mlm_ppl' -> ('valid_x_mlm_ppl', smaller_is_better=True)."""
    return name.lstrip("_"), name.startswith("_")


def parse_stopping(spec: str) -> tuple[str, bool, int] | None:
    if not spec.strip():
        return None
    name, _, n = spec.partition(",")
    if not name.strip() or not n.strip().lstrip("-").isdigit():
        raise ValueError(f"bad run.stopping_criterion {spec!r}: expected 'metric,N' (e.g. '_valid_en_mlm_ppl,10')")
    metric, smaller = metric_spec(name.strip())
    return metric, smaller, int(n)


def _identity(config: dict) -> dict:
    """The part of a resolved config that decides whether a checkpoint can be resumed."""
    config = json.loads(json.dumps(config))
    for k in VOLATILE_RUN_KEYS:
        config.get("run", {}).pop(k, None)
    return config


def _diff_keys(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _np_state(rs: np.random.RandomState) -> list:
    name, keys, pos, has_gauss, gauss = rs.get_state()
    return [name, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)]


def _set_np_state(rs, state: list) -> None:
    name, keys, pos, has_gauss, gauss = state
    rs.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))


def _py_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _plain(x):
    """numpy/torch scalars -> python numbers (checkpoints and JSON hold plain types only)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.generic, torch.Tensor)) and np.ndim(x) == 0:
        return x.item()
    return x


# --- the trainer ---------------------------------------------------------------------------------------------------

class Trainer:
    """One training run. Usage: Trainer(...) -> attach(models, net, iterators) -> run(iteration, evaluate)
    -> finish(out, metrics_out). `iteration()` does one XLM iteration (calls `optimize` once per step),
    `evaluate()` returns {metric: value} (called on the master only)."""

    def __init__(self, cfg, kind: str, run_dir: str | Path, inputs: dict, langs: list[str], words: list[str],
                 counts: list[int], metric_names: list[str] | None = None, log=print):
        self.cfg, self.kind, self.inputs = cfg, kind, json.loads(json.dumps(inputs, default=str))
        self.langs, self.words, self.counts = list(langs), list(words), list(counts)
        self.run_dir = Path(run_dir)
        self._log = log
        rc = cfg.run
        if rc.threads > 0:
            torch.set_num_threads(rc.threads)
        self.dist = dist_from_env()
        self.device = choose_device(rc.device, self.dist.local_rank)
        if self.dist.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", init_method="env://",
                                    rank=self.dist.rank, world_size=self.dist.world,
                                    timeout=datetime.timedelta(hours=2))
        self.amp_dtype = resolve_amp(rc.amp, self.device)
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
        self.nan_run = self.nan_total = 0
        self.elapsed = 0.0
        self.done = False
        self.last_ckpt_step = 0
        self.config = to_dict(cfg)
        self._signal: int | None = None
        self._stats: dict[str, list[float]] = {}
        self._words = 0
        self._t_log = self._t0 = time.time()
        self.resume = self._prepare_run_dir()

    # --- logging
    def log(self, msg: str) -> None:
        if self.dist.is_master:
            self._log(msg)

    def record(self, name: str, loss: float, n_words: int = 0) -> None:
        self._stats.setdefault(name, []).append(loss)
        self._words += n_words

    # --- run directory, resume, stale runs
    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def _run_files(self) -> list[Path]:
        files = [self.run_dir / n for n in RUN_FILES] + sorted(self.run_dir.glob("best-*.pt"))
        return [f for f in files if f.is_file()]

    def _stale(self, reason: str) -> None:
        files = self._run_files()
        n = 1
        while any(f.with_name(f"{f.name}.stale-{n}").exists() for f in files):
            n += 1
        self.log(f"{reason}: moving the old run files to *.stale-{n} and starting fresh")
        if self.dist.is_master:
            for f in files:
                f.rename(f.with_name(f"{f.name}.stale-{n}"))

    def _prepare_run_dir(self) -> dict | None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resume = None
        if self.ckpt_path.exists():
            try:
                ck = safe_load(self.ckpt_path)
            except CheckpointError as e:
                prev = self.run_dir / "checkpoint.prev.pt"
                hint = (f"; the previous checkpoint {prev} is kept: rename it to checkpoint.pt to resume from it"
                        if prev.exists() else "") + ", or move the file away to start fresh"
                raise CheckpointError(f"{e}{hint}") from e
            if ck.get("kind") != self.kind or "trainer" not in ck:
                diff = ["kind" if ck.get("kind") != self.kind else "training state"]
            else:
                diff = _diff_keys(_identity(ck.get("config") or {}), _identity(self.config))
            diff += ["inputs." + k for k in _diff_keys(ck.get("inputs") or {}, self.inputs)]
            if not diff:
                resume = ck
                self.log(f"resuming from {self.ckpt_path}: step {ck['trainer']['step']}, epoch {ck['trainer']['epoch']}"
                         + (" (already finished)" if ck["trainer"].get("done") else ""))
            else:
                self._stale(f"{self.ckpt_path} was written with a different config ({', '.join(diff[:6])})")
        elif self._run_files():
            old = self.run_dir / "config.yaml"
            same = old.is_file() and _identity(yaml.safe_load(old.read_text()) or {}) == _identity(self.config)
            if not same:
                self._stale(f"{self.run_dir} holds files of another run")
        if self.dist.is_master:
            dump_yaml(self.cfg, self.run_dir / "config.yaml")
        self.barrier()
        return resume

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
        self._install_signals()
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
            raise NonFiniteLossError(f"{self.nan_run} consecutive non-finite losses/gradients at step {self.step} "
                                     f"(run.max_nan_steps = {self.cfg.run.max_nan_steps}); the last good checkpoint is "
                                     f"{self.ckpt_path}. Lower the learning rate or use another amp setting.")
        return False

    # --- state
    def _rank_state(self) -> dict:
        st = {"torch": torch.get_rng_state(), "numpy": _np_state(np.random.mtrand._rand), "python": _py_state(),
              "trainer": _np_state(self.rng), "iterators": {k: it.state() for k, it in self.iterators.items()}}
        if self.device.type == "cuda":
            st["cuda"] = torch.cuda.get_rng_state(self.device)
        return st

    def _load_state(self, ck: dict) -> None:
        t = ck["trainer"]
        for k in ("step", "epoch", "n_iter", "n_sentences", "bad_epochs", "nan_total", "last_ckpt_step"):
            setattr(self, k, int(t[k]))
        self.best, self.best_stop, self.elapsed = dict(t["best"]), t["best_stop"], float(t["elapsed"])
        self.history, self.done = list(t["history"]), bool(t["done"])
        ranks = ck["ranks"]
        if len(ranks) != self.dist.world:
            self.log(f"WARNING: checkpoint written by {len(ranks)} processes, now {self.dist.world}: "
                     "random states and data order are re-seeded")
            if self.dist.rank < len(ranks):
                st = ranks[self.dist.rank]
                for k, it in self.iterators.items():
                    it.load_state(st["iterators"][k])
            return
        st = ranks[self.dist.rank]
        torch.set_rng_state(st["torch"])
        if "cuda" in st and self.device.type == "cuda":
            torch.cuda.set_rng_state(st["cuda"], self.device)
        _set_np_state(np.random.mtrand._rand, st["numpy"])
        random.setstate((st["python"][0], tuple(st["python"][1]), st["python"][2]))
        _set_np_state(self.rng, st["trainer"])
        for k, it in self.iterators.items():
            it.load_state(st["iterators"][k])

    def _extra(self) -> dict:
        return {"inputs": self.inputs}

    def save_checkpoint(self) -> None:
        """Resume checkpoint (all ranks must call it: random states of every rank are gathered)."""
        ranks = [self._rank_state()]
        if self.dist.world > 1:
            ranks = [None] * self.dist.world
            dist.all_gather_object(ranks, self._rank_state())
        if self.dist.is_master:
            trainer = {"step": self.step, "epoch": self.epoch, "n_iter": self.n_iter, "n_sentences": self.n_sentences,
                       "best": self.best, "best_stop": self.best_stop, "bad_epochs": self.bad_epochs,
                       "history": self.history, "nan_total": self.nan_total, "elapsed": self.time(),
                       "done": self.done, "last_ckpt_step": self.step}
            if self.ckpt_path.exists():  # keep the previous good checkpoint (hard link, then atomic rename)
                prev, tmp = self.run_dir / "checkpoint.prev.pt", self.run_dir / "checkpoint.prev.pt.tmp"
                tmp.unlink(missing_ok=True)
                try:
                    os.link(self.ckpt_path, tmp)
                except OSError:
                    import shutil

                    shutil.copyfile(self.ckpt_path, tmp)
                os.replace(tmp, prev)
            save_model(self.ckpt_path, self.kind, self.models, self.cfg.model, self.langs, self.words, self.counts,
                       self.config, optimizer=self.opt.state_dict(),
                       scaler=self.scaler.state_dict() if self.scaler is not None else None,
                       trainer=_plain(trainer), ranks=ranks, **self._extra())
        self.last_ckpt_step = self.step
        self.barrier()

    def save_weights(self, path: Path, **extra) -> None:
        save_model(path, self.kind, self.models, self.cfg.model, self.langs, self.words, self.counts, self.config,
                   **_plain(extra))

    def time(self) -> float:
        return self.elapsed + time.time() - self._t0

    def barrier(self) -> None:
        if self.dist.world > 1:
            dist.barrier()

    # --- signals
    def _install_signals(self) -> None:
        self._old_handlers = {}
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            self._signal = signum

        for s in (signal.SIGUSR1, signal.SIGTERM):
            self._old_handlers[s] = signal.signal(s, handler)

    def _restore_signals(self) -> None:
        for s, h in getattr(self, "_old_handlers", {}).items():
            signal.signal(s, h)
        self._old_handlers = {}

    def _signalled(self) -> int:
        sig = torch.tensor(float(self._signal or 0))
        if self.dist.world > 1:
            dist.all_reduce(sig, op=dist.ReduceOp.MAX)
        return int(sig.item())

    # --- the loop
    def max_steps_reached(self) -> bool:
        return self.cfg.run.max_steps > 0 and self.step >= self.cfg.run.max_steps

    def end_iteration(self) -> None:
        self.n_iter += 1
        every = self.cfg.run.log_every
        if every > 0 and self.n_iter % every == 0:
            self._log_stats()
        sig = self._signalled()
        if sig:
            self.save_checkpoint()
            self.log(f"signal {signal.Signals(sig).name}: checkpoint written at step {self.step} "
                     f"({self.ckpt_path}); exiting with status {EXIT_REQUEUE} to be restarted")
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
            self._restore_signals()

    def end_epoch(self, evaluate) -> None:
        metrics = [_plain(evaluate()) if self.dist.is_master else None]
        if self.dist.world > 1:
            dist.broadcast_object_list(metrics, src=0)
        metrics = metrics[0]
        record = {"epoch": self.epoch, "step": self.step, "time_s": round(self.time(), 2), **metrics}
        self.history.append(record)
        self.log(f"end of epoch {self.epoch} (step {self.step}): "
                 + " ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        for name, smaller in self.validation:
            v = metrics[name]
            b = self.best.get(name)
            if b is None or (v < b if smaller else v > b):
                self.best[name] = v
                if self.dist.is_master:
                    self.save_weights(self.run_dir / f"best-{name}.pt", step=self.step, epoch=self.epoch,
                                      metrics=record)
                self.log(f"new best {name}: {v:.4g}")
        stop = False
        if self.stopping:
            name, smaller, patience = self.stopping
            v = metrics[name]
            if self.best_stop is None or (v < self.best_stop if smaller else v > self.best_stop):
                self.best_stop, self.bad_epochs = v, 0
            else:
                self.bad_epochs += 1
                self.log(f"no improvement of {name} for {self.bad_epochs} epoch(s) (best {self.best_stop:.4g})")
                if self.bad_epochs > patience:
                    self.log(f"stopping criterion {name},{patience} reached")
                    stop = True
        self.epoch += 1
        self.n_sentences = 0
        if self.epoch >= self.cfg.run.max_epochs:
            self.log(f"max_epochs {self.cfg.run.max_epochs} reached")
            stop = True
        if self.max_steps_reached():
            self.log(f"max_steps {self.cfg.run.max_steps} reached")
            stop = True
        self.done = stop
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
        self.barrier()
        return {"step": self.step, "epoch": self.epoch, "best": dict(self.best),
                "last": self.history[-1] if self.history else {}, "history": list(self.history),
                "best_file": str(best_file) if best_file else None, "out": out, "nan_steps": self.nan_total}


def stable_seed(*parts) -> int:
    """A 31-bit seed from ints and strings (stable across processes, unlike hash())."""
    return zlib.crc32(json.dumps(parts).encode()) & 0x7FFFFFFF


def ce_stats(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, int, int]:
    """(sum of cross-entropy, number of correct argmax, number of targets) for evaluation."""
    logits = logits.float()
    loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
    return loss, int((logits.argmax(-1) == y).sum()), int(y.numel())


def ppl_acc(loss_sum: float, correct: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 1e9, 0.0
    return math.exp(min(loss_sum / n, 100.0)), 100.0 * correct / n


# --- inputs shared by the trainers -------------------------------------------------------------------------------

ARCH_FIELDS = ("dim", "n_layers", "n_heads", "pre_norm", "gelu", "sinusoidal", "max_positions", "use_lang_emb")


def check_arch(ck_model_config: dict, cfg, path) -> None:
    """The run's model config must describe the architecture of the checkpoint it starts from (adapters may be new)."""
    for f in ARCH_FIELDS:
        if f in ck_model_config and ck_model_config[f] != getattr(cfg, f):
            raise CheckpointError(f"{path} has model.{f} = {ck_model_config[f]!r} but the run config says "
                                  f"{getattr(cfg, f)!r}; set model.{f} to the checkpoint's value")
    a = int(ck_model_config.get("adapter_size", 0))
    if a and a != cfg.adapter_size:
        raise CheckpointError(f"{path} has adapters of size {a} but the run config says model.adapter_size = "
                              f"{cfg.adapter_size}")


def open_corpora(paths: dict[str, str], dico, vocab: str, what: str) -> dict:
    """Corpus objects for {lang: json}; each must be binarized with the model's dictionary or a prefix of it
    (RE-LM: the HMR corpus keeps the HMR dictionary, whose ids mean the same in the extended one)."""
    from relm.data.corpus import Corpus
    from relm.data.dictionary import Dictionary
    from relm.files import sha256_file

    sha = sha256_file(vocab)
    out = {}
    for lang, path in sorted(paths.items()):
        c = Corpus(path)
        if c.meta.get("lang") not in (None, lang):
            raise ValueError(f"{what} corpus {path} is language {c.meta['lang']!r}, given as {lang!r}")
        if c.meta.get("vocab_sha256") != sha:
            src = c.meta.get("vocab")
            if not src or not Path(src).is_file():
                raise ValueError(f"{what} corpus {path} was binarized with the vocabulary {src!r}, which differs from "
                                 f"{vocab} and cannot be read to check that it is a prefix of it")
            Dictionary.read_vocab(src).check_prefix_of(dico)
        if c.meta.get("n_words", 0) > len(dico):
            raise ValueError(f"{what} corpus {path} has {c.meta['n_words']} words, the model's dictionary {len(dico)}")
        out[lang] = c
    return out
