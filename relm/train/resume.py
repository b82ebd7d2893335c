"""Stopping and resuming a training run: the run directory, what a run is (its identity), resume checkpoints, stale
runs, the run-directory lock, random states, signals.

Run directory: `config.yaml` (resolved config, written at start), `inputs.json` (what the run consumes: path, sha256
and size of the vocabulary, every corpus, the --init checkpoint and the extension sidecar; relm.train.fingerprint),
`checkpoint.pt` (resume checkpoint, every `checkpoint_every` updates and at every epoch end; the one before it is kept
as `checkpoint.prev.pt`), `best-<metric>.pt`, `delivered.json` (written by Trainer.finish: the sha256 of the model
written to --out, the metrics path, the step), `digests.json` (cache of input digests), `train.lock`.

Identity: a run is its kind, its config less the volatile keys (threads, log_every, checkpoint_every, max_nan_steps)
and the budget (max_steps, max_epochs), and the content of its inputs; a setting that a checkpoint's config lacks
(added to relm since) counts at its default. Starting a run on a directory whose
checkpoint.pt has another identity moves the old run files to `*.stale-<n>` (the log names what changed) and trains
afresh; with the same identity:
  - an interrupted run (not finished) resumes, always (SLURM retries, pre-emption);
  - a run finished because of its budget (max_steps / max_epochs, not the stopping criterion) continues when the
    budget was raised; a budget lowered below the steps (epochs) already done makes the run stale;
  - a finished run whose outputs were not delivered yet (killed between the last checkpoint and writing --out)
    writes them without training;
  - a finished run that delivered --out, which is now missing or different, is a forced rerun (snakemake --forcerun,
    or the user deleted the model, and Snakemake deletes a job's outputs before it runs it): stale, trained afresh.
A truncated or corrupt checkpoint.pt is moved to checkpoint.pt.corrupt and the run resumes from checkpoint.prev.pt
(with a warning); only when both are unusable is it an error.
A resume checkpoint holds, besides weights and optimizer, the random states of every rank (torch, numpy, python, the
trainer's RandomState, the data iterators), so a resumed run continues exactly as if it had not stopped.

Lock: one trainer per run directory (fcntl.flock on train.lock, taken by rank 0, released on exit: the kernel drops
it with the process, also on SIGKILL). A second trainer is refused with an error naming the directory and the
holder's PID.

Signals: SIGUSR1, SIGTERM, SIGHUP and SIGINT (Ctrl-C) are recorded; at the next iteration boundary the trainer
writes a resume checkpoint and exits with
  - status 75 (EX_TEMPFAIL) for SIGUSR1, SIGTERM and SIGHUP: the job was stopped from outside (pre-emption, SLURM's
    time limit or --signal, a closed terminal) and is meant to be retried/requeued; the next start resumes
    (Snakemake's `retries` / SLURM requeue treat any non-zero status as a failure to retry);
  - status 130 (128 + SIGINT, what a shell reports for Ctrl-C) for SIGINT: the user asked to stop; a retry is
    not what they want, but starting the run again resumes from the checkpoint. A second Ctrl-C stops at once
    (KeyboardInterrupt), losing the work since the last checkpoint.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from relm import errors
from relm.config import dump_yaml, merge, to_dict
from relm.errors import CheckpointError
from relm.files import atomic_write_text, sha256_file
from relm.model.checkpoint import safe_load
from relm.train.devices import DistInfo
from relm.train.fingerprint import DigestCache, describe, fingerprint, identity

EXIT_REQUEUE = 75
EXIT_SIGINT = 130
CHECKPOINT, PREVIOUS, CORRUPT = "checkpoint.pt", "checkpoint.prev.pt", "checkpoint.pt.corrupt"
INPUTS, DELIVERED, DIGESTS, LOCK = "inputs.json", "delivered.json", "digests.json", "train.lock"
RUN_FILES = (CHECKPOINT, PREVIOUS, "config.yaml", INPUTS, DELIVERED)
VOLATILE_RUN_KEYS = ("threads", "log_every", "checkpoint_every", "max_nan_steps")  # may change between resumes
BUDGET_RUN_KEYS = ("max_steps", "max_epochs")  # not an identity: raising them continues a run


class Interrupted(SystemExit):
    """Raised after the resume checkpoint was written on a signal; exits the process with status 75 (130 for
    SIGINT)."""

    def __init__(self, signum: int):
        super().__init__(exit_status(signum))
        self.signum = signum


def exit_status(signum: int) -> int:
    return EXIT_SIGINT if signum == signal.SIGINT else EXIT_REQUEUE


class RunDirBusyError(CheckpointError):
    """Another trainer holds the lock of the run directory."""


def plain(x):
    """numpy/torch scalars -> python numbers (checkpoints and JSON hold plain types only)."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, (np.generic, torch.Tensor)) and np.ndim(x) == 0:
        return x.item()
    return x


# --- the lock --------------------------------------------------------------------------------------------------------

class RunLock:
    """An exclusive flock on <run_dir>/train.lock, holding "PID host" of its holder."""

    def __init__(self, run_dir: Path, log):
        self.path = run_dir / LOCK
        self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 200, 0).decode(errors="replace").split()
            self._close()
            who = f" by PID {holder[0]}" + (f" on {holder[1]}" if len(holder) > 1 else "") if holder else ""
            raise RunDirBusyError(f"run directory {run_dir} is in use{who} (lock {self.path}): another trainer runs "
                                  f"there; wait for it or stop it") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                self._close()
                raise
            log(f"WARNING: cannot lock {self.path} ({e.strerror}): this file system has no flock; make sure that "
                f"a single trainer uses {run_dir}")
        else:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._finalizer = weakref.finalize(self, os.close, self.fd)

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def release(self) -> None:
        """Drop the lock (closing the file drops it; also when the process ends in any way)."""
        if self.fd is not None:
            self._finalizer.detach()
            self._close()


# --- run directory, identity and stale runs ------------------------------------------------------------------------

def _identity(config: dict) -> dict:
    """The part of a resolved config that decides whether a checkpoint can be resumed."""
    config = json.loads(json.dumps(config))
    for k in VOLATILE_RUN_KEYS + BUDGET_RUN_KEYS:
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


def _stale(run_dir: Path, log, reason: str) -> None:
    files = _run_files(run_dir)
    n = 1
    while any(f.with_name(f"{f.name}.stale-{n}").exists() for f in files):
        n += 1
    log(f"{reason}: moving the old run files to *.stale-{n} and starting fresh")
    for f in files:
        f.rename(f.with_name(f"{f.name}.stale-{n}"))


def _changes(old_config: dict, config: dict, old_inputs, fp: dict) -> str:
    """'' when the identities are equal, else what changed (config keys, inputs with their paths)."""
    parts = []
    keys = _diff_keys(_identity(old_config or {}), _identity(config))
    if keys:
        parts.append("config changed: " + ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else ""))
    keys = _diff_keys(identity(old_inputs or {}), identity(fp))
    if keys:
        parts.append("inputs changed: " + ", ".join(describe(fp, k) for k in keys[:6])
                     + (", ..." if len(keys) > 6 else ""))
    return "; ".join(parts)


def _load_resume_checkpoint(run_dir: Path, log) -> dict | None:
    """checkpoint.pt; when it is truncated or corrupt, checkpoint.prev.pt (which then becomes checkpoint.pt; the bad
    file is kept as checkpoint.pt.corrupt). None when there is no checkpoint."""
    ckpt, prev = run_dir / CHECKPOINT, run_dir / PREVIOUS
    if not ckpt.exists():
        return None
    try:
        return safe_load(ckpt)
    except CheckpointError as e:
        if not prev.is_file():
            raise CheckpointError(f"{e}; there is no {prev} to fall back to: move {ckpt} away to start fresh") from e
        try:
            ck = safe_load(prev)
        except CheckpointError as e2:
            raise CheckpointError(f"neither {ckpt} nor {prev} can be loaded ({e}; {e2}): move both away to start "
                                  f"fresh") from e2
        log(f"WARNING: {e}; falling back to the previous checkpoint {prev} (the bad file is kept as {CORRUPT})")
        os.replace(ckpt, run_dir / CORRUPT)
        _copy_atomic(prev, ckpt)
        return ck


def _copy_atomic(src: Path, dst: Path) -> None:
    """dst = src by a hard link (a copy where links are not possible), replaced atomically."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def stop_reasons(t: dict) -> list[str] | None:
    """Why a finished run stopped: a list of 'criterion', 'max_epochs', 'max_steps' (None: unknown)."""
    r = t.get("stopped")
    return list(r) if isinstance(r, list) else None


def budget_verdict(t: dict, run_cfg) -> tuple[str, str]:
    """('ok' | 'continue' | 'stale', why) for the training state `t` of a checkpoint under the budget of run_cfg."""
    step, epoch, done = int(t["step"]), int(t["epoch"]), bool(t["done"])
    max_steps, max_epochs = run_cfg.max_steps, run_cfg.max_epochs
    if max_steps > 0 and step > max_steps:
        return "stale", f"the run took {step} steps, more than run.max_steps = {max_steps} now"
    if epoch > max_epochs or (not done and epoch >= max_epochs):
        return "stale", f"the run did {epoch} epochs, more than run.max_epochs = {max_epochs} now"
    if done:
        reasons = stop_reasons(t)
        if reasons and "criterion" not in reasons and epoch < max_epochs and (max_steps <= 0 or step < max_steps):
            return "continue", (f"it had stopped at {' and '.join(reasons)}; the budget is now max_steps "
                                f"{max_steps or 'unlimited'}, max_epochs {max_epochs}: training on")
    return "ok", ""


def _rel(path, run_dir: Path) -> str:
    return os.path.relpath(Path(path).resolve(), run_dir.resolve())


def write_delivered(run_dir: Path, out: str | None, metrics_out: str | None, step: int) -> None:
    """Record that the finished run wrote its outputs (called at the end of Trainer.finish)."""
    rec = {"out": _rel(out, run_dir) if out else None, "sha256": sha256_file(out) if out else None,
           "metrics": _rel(metrics_out, run_dir) if metrics_out else None, "step": int(step)}
    atomic_write_text(run_dir / DELIVERED, json.dumps(rec, indent=1) + "\n")


def _forced_rerun(run_dir: Path, step: int, out: str | None) -> str:
    """Why a finished run that already delivered `out` must be trained again ('' when it need not be)."""
    f = run_dir / DELIVERED
    if not out or not f.is_file():
        return ""
    try:
        rec = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if rec.get("out") != _rel(out, run_dir) or rec.get("step") != step:
        return ""  # delivered elsewhere, or an older state: the outputs of this state were not written yet
    if not Path(out).is_file():
        return (f"{out}, delivered by this finished run, is missing: a forced rerun (snakemake --forcerun, or the "
                f"file was deleted)")
    if sha256_file(out) != rec.get("sha256"):
        return f"{out} differs from the model this finished run delivered: a forced rerun"
    return ""


@dataclass
class RunStart:
    resume: dict | None  # the checkpoint to resume from
    inputs: dict  # the fingerprint of the run's inputs
    lock: RunLock | None  # held by the master


def _decide(run_dir: Path, cfg, kind: str, inputs: dict, log, words, out) -> tuple[dict | None, dict]:
    """The master's part of prepare_run_dir: (checkpoint to resume or None, fingerprint)."""
    cache = DigestCache(run_dir / DIGESTS)
    fp = fingerprint(inputs, cache)
    cache.save()
    config, ckpt = to_dict(cfg), run_dir / CHECKPOINT
    ck = _load_resume_checkpoint(run_dir, log)
    resume = None
    if ck is not None:
        if ck.get("kind") != kind or "trainer" not in ck:
            reason = f"{ckpt} holds " + (f"a {ck.get('kind')!r} run" if ck.get("kind") != kind else "no training state")
        else:
            # a setting added since the checkpoint was written counts at its default (a new setting's default
            # keeps the behaviour before it), so a code update does not restart unfinished runs
            old = merge(to_dict(type(cfg)()), ck.get("config") or {})
            reason = _changes(old, config, ck.get("inputs"), fp)
            if not reason and words is not None and list(ck.get("words") or []) != list(words):
                reason = "the dictionary changed"
            reason = reason and f"{ckpt} was written by another run ({reason})"
        t = ck.get("trainer") or {}
        note = ""
        if not reason:
            verdict, why = budget_verdict(t, cfg.run)
            if verdict == "stale":
                reason = f"{ckpt}: {why}"
            elif verdict == "continue":
                t["done"], note = False, f" (finished; {why})"
        if not reason and t["done"]:
            reason = _forced_rerun(run_dir, int(t["step"]), out)
        if reason:
            _stale(run_dir, log, reason)
        else:
            resume = ck
            log(f"resuming from {ckpt}: step {t['step']}, epoch {t['epoch']}"
                + (note or (" (already finished)" if t["done"] else "")))
            if not t["done"]:
                (run_dir / DELIVERED).unlink(missing_ok=True)
    elif _run_files(run_dir):  # started before, stopped before its first checkpoint
        old, old_in = run_dir / "config.yaml", run_dir / INPUTS
        reason = "no config.yaml" if not old.is_file() else _changes(
            yaml.safe_load(old.read_text()) or {}, config,
            json.loads(old_in.read_text()) if old_in.is_file() else fp, fp)
        if reason:
            _stale(run_dir, log, f"{run_dir} holds files of another run ({reason})")
    log(cache.summary())
    dump_yaml(cfg, run_dir / "config.yaml")
    atomic_write_text(run_dir / INPUTS, json.dumps(fp, indent=1) + "\n")
    return resume, fp


def _error_class(name: str):
    cls = getattr(errors, name, None) or globals().get(name)
    return cls if isinstance(cls, type) and issubclass(cls, Exception) else RuntimeError


def prepare_run_dir(run_dir: Path, cfg, kind: str, inputs: dict, info: DistInfo, log, words=None,
                    out: str | None = None) -> RunStart:
    """Lock the run directory, fingerprint the inputs, decide between resuming, writing the outputs of a finished
    run and starting fresh (see the module docstring), write config.yaml and inputs.json. The master decides; the
    other ranks follow (their resume checkpoint is loaded after the master settled the files)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    msg, lock, ck, err = None, None, None, None
    if info.is_master:
        try:
            lock = RunLock(run_dir, log)
            ck, fp = _decide(run_dir, cfg, kind, inputs, log, words, out)
            msg = ("ok", fp, ck is not None, bool(ck and ck["trainer"]["done"]))
        except Exception as e:
            if lock is not None:
                lock.release()
            if info.world == 1:
                raise
            msg, err = ("error", type(e).__name__, str(e)), e
    if info.world > 1:
        box = [msg]
        dist.broadcast_object_list(box, src=0)
        msg = box[0]
        if msg[0] == "error":
            if err is not None:
                raise err
            raise _error_class(msg[1])(msg[2])
    _, fp, resume, done = msg
    if resume and not info.is_master:
        ck = safe_load(run_dir / CHECKPOINT)
        ck["trainer"]["done"] = done
    return RunStart(ck, fp, lock)


def keep_previous(ckpt: Path) -> None:
    """Keep the current resume checkpoint as checkpoint.prev.pt before it is replaced (hard link, atomic rename)."""
    if ckpt.exists():
        _copy_atomic(ckpt, ckpt.with_name(PREVIOUS))


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

HANDLED = (signal.SIGUSR1, signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Signals:
    """Handlers of SIGUSR1/SIGTERM/SIGHUP/SIGINT that only record the signal (installed from the main thread only);
    the trainer asks `received()` at iteration boundaries, writes a resume checkpoint and raises Interrupted. A
    second SIGINT raises KeyboardInterrupt at once."""

    def __init__(self):
        self.signum: int | None = None
        self._old_handlers = {}
        if threading.current_thread() is threading.main_thread():
            for s in HANDLED:
                self._old_handlers[s] = signal.signal(s, self._handler)

    def _handler(self, signum, _frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
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
