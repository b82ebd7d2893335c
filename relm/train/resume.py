"""Stopping and resuming a training run: the run directory, resume checkpoints, stale runs, random states, signals.

Run directory: `config.yaml` (resolved config, written at start), `checkpoint.pt` (resume checkpoint, every
`checkpoint_every` updates and at every epoch end; the one before it is kept as `checkpoint.prev.pt`),
`best-<metric>.pt`.
Starting a run again on the same directory resumes from `checkpoint.pt` when its config and inputs equal the new ones;
otherwise the old run files are renamed to `*.stale-<n>` and training starts fresh.
A resume checkpoint holds, besides weights and optimizer, the random states of every rank (torch, numpy, python, the
trainer's RandomState, the data iterators), so a resumed run continues exactly as if it had not stopped.

Exit status 75 (EX_TEMPFAIL): SIGUSR1 or SIGTERM was received; a resume checkpoint was written at the next iteration
boundary and the job is meant to be retried/requeued (the next start resumes).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from relm.config import dump_yaml, to_dict
from relm.errors import CheckpointError
from relm.model.checkpoint import safe_load
from relm.train.devices import DistInfo

EXIT_REQUEUE = 75
CHECKPOINT, PREVIOUS = "checkpoint.pt", "checkpoint.prev.pt"
RUN_FILES = (CHECKPOINT, PREVIOUS, "config.yaml")
VOLATILE_RUN_KEYS = ("threads", "log_every", "checkpoint_every", "max_nan_steps")  # may change between resumes


class Interrupted(SystemExit):
    """Raised after the resume checkpoint was written on SIGUSR1/SIGTERM; exits the process with status 75."""

    def __init__(self, signum: int):
        super().__init__(EXIT_REQUEUE)
        self.signum = signum


def plain(x):
    """numpy/torch scalars -> python numbers (checkpoints and JSON hold plain types only)."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, (np.generic, torch.Tensor)) and np.ndim(x) == 0:
        return x.item()
    return x


# --- run directory and stale runs ----------------------------------------------------------------------------------

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


def _run_files(run_dir: Path) -> list[Path]:
    files = [run_dir / n for n in RUN_FILES] + sorted(run_dir.glob("best-*.pt"))
    return [f for f in files if f.is_file()]


def _stale(run_dir: Path, info: DistInfo, log, reason: str) -> None:
    files = _run_files(run_dir)
    n = 1
    while any(f.with_name(f"{f.name}.stale-{n}").exists() for f in files):
        n += 1
    log(f"{reason}: moving the old run files to *.stale-{n} and starting fresh")
    if info.is_master:
        for f in files:
            f.rename(f.with_name(f"{f.name}.stale-{n}"))


def prepare_run_dir(run_dir: Path, cfg, kind: str, inputs: dict, info: DistInfo, log) -> dict | None:
    """Create the run directory and write config.yaml; returns the resume checkpoint when checkpoint.pt was written
    by a run of the same kind, config and inputs (else the old run files go stale and None is returned)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config, ckpt = to_dict(cfg), run_dir / CHECKPOINT
    resume = None
    if ckpt.exists():
        try:
            ck = safe_load(ckpt)
        except CheckpointError as e:
            prev = run_dir / PREVIOUS
            hint = (f"; the previous checkpoint {prev} is kept: rename it to checkpoint.pt to resume from it"
                    if prev.exists() else "") + ", or move the file away to start fresh"
            raise CheckpointError(f"{e}{hint}") from e
        if ck.get("kind") != kind or "trainer" not in ck:
            diff = ["kind" if ck.get("kind") != kind else "training state"]
        else:
            diff = _diff_keys(_identity(ck.get("config") or {}), _identity(config))
        diff += ["inputs." + k for k in _diff_keys(ck.get("inputs") or {}, inputs)]
        if not diff:
            resume = ck
            log(f"resuming from {ckpt}: step {ck['trainer']['step']}, epoch {ck['trainer']['epoch']}"
                + (" (already finished)" if ck["trainer"].get("done") else ""))
        else:
            _stale(run_dir, info, log, f"{ckpt} was written with a different config ({', '.join(diff[:6])})")
    elif _run_files(run_dir):
        old = run_dir / "config.yaml"
        same = old.is_file() and _identity(yaml.safe_load(old.read_text()) or {}) == _identity(config)
        if not same:
            _stale(run_dir, info, log, f"{run_dir} holds files of another run")
    if info.is_master:
        dump_yaml(cfg, run_dir / "config.yaml")
    info.barrier()
    return resume


def keep_previous(ckpt: Path) -> None:
    """Keep the current resume checkpoint as checkpoint.prev.pt before it is replaced (hard link, atomic rename)."""
    if not ckpt.exists():
        return
    prev, tmp = ckpt.with_name(PREVIOUS), ckpt.with_name(PREVIOUS + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(ckpt, tmp)
    except OSError:
        shutil.copyfile(ckpt, tmp)
    os.replace(tmp, prev)


# --- random states -------------------------------------------------------------------------------------------------

def _np_state(rs: np.random.RandomState) -> list:
    name, keys, pos, has_gauss, gauss = rs.get_state()
    return [name, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)]


def _set_np_state(rs, state: list) -> None:
    name, keys, pos, has_gauss, gauss = state
    rs.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))


def _py_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _rank_state(device: torch.device, rng: np.random.RandomState, iterators: dict) -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": _np_state(np.random.mtrand._rand), "python": _py_state(),
          "trainer": _np_state(rng), "iterators": {k: it.state() for k, it in iterators.items()}}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def gather_rank_states(info: DistInfo, device: torch.device, rng: np.random.RandomState, iterators: dict) -> list:
    """The random states and data positions of every rank (all ranks must call it)."""
    ranks = [_rank_state(device, rng, iterators)]
    if info.world > 1:
        ranks = [None] * info.world
        dist.all_gather_object(ranks, _rank_state(device, rng, iterators))
    return ranks


def restore_rank_state(ranks: list, info: DistInfo, device: torch.device, rng: np.random.RandomState,
                       iterators: dict, log) -> None:
    """Inverse of gather_rank_states for this rank. With another number of processes only the data positions of the
    ranks that exist in both are restored."""
    if len(ranks) != info.world:
        log(f"WARNING: checkpoint written by {len(ranks)} processes, now {info.world}: "
            "random states and data order are re-seeded")
        if info.rank < len(ranks):
            st = ranks[info.rank]
            for k, it in iterators.items():
                it.load_state(st["iterators"][k])
        return
    st = ranks[info.rank]
    torch.set_rng_state(st["torch"])
    if "cuda" in st and device.type == "cuda":
        torch.cuda.set_rng_state(st["cuda"], device)
    _set_np_state(np.random.mtrand._rand, st["numpy"])
    random.setstate((st["python"][0], tuple(st["python"][1]), st["python"][2]))
    _set_np_state(rng, st["trainer"])
    for k, it in iterators.items():
        it.load_state(st["iterators"][k])


# --- signals -------------------------------------------------------------------------------------------------------

class Signals:
    """SIGUSR1/SIGTERM handlers that only record the signal (installed from the main thread only); the trainer asks
    `received()` at iteration boundaries, writes a resume checkpoint and raises Interrupted."""

    def __init__(self):
        self.signum: int | None = None
        self._old_handlers = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGUSR1, signal.SIGTERM):
                self._old_handlers[s] = signal.signal(s, self._handler)

    def _handler(self, signum, _frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._old_handlers = {}

    def received(self, info: DistInfo) -> int:
        """The signal number received by any rank (0 = none); all ranks must call it."""
        sig = torch.tensor(float(self.signum or 0))
        if info.world > 1:
            dist.all_reduce(sig, op=dist.ReduceOp.MAX)
        return int(sig.item())
