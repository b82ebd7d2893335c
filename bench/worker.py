"""Run one benchmark function in this (fresh) process and write its figures as one JSON object.

    python -m bench.worker MODULE CASE IMPL SIZE WORK OUT

MODULE: a module of bench/cases, or any importable dotted name.
torch and numpy are imported before anything is measured, so every implementation starts from the same baseline
resident memory. Peak memory is VmHWM after the run minus the resident memory before it; VmHWM is reset first by
writing "5" to /proc/self/clear_refs (Linux; without it the peak counts from the process start, "peak_reset" says
which). Child processes (process pools) count in cpu_s, and the largest child's peak is added to peak_mb: a forked
child starts sharing this process's memory, so what counts is its peak minus its resident memory just after the fork
(recorded by an at-fork hook); a child that runs another program (no hook) counts whole.
VmHWM counts the pages of memory-mapped files that were read (page cache the kernel can drop at any time) as much as
memory the process owns; "private_mb" is the peak of the latter alone (RssAnon, sampled every few milliseconds by a
thread, above its value before the run).
"""
import torch  # noqa: F401  (first: part of the baseline)
import numpy  # noqa: F401

import gc
import importlib
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path


def _status_kb(field: str) -> int:
    """VmRSS / VmHWM of this process in kB (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _forked_start_kb(log: Path) -> int:
    """Smallest resident memory of the forked children right after their fork (0 without forked children)."""
    starts = [int(v) for v in log.read_text().split()] if log.exists() else []
    return min(starts, default=0)


def measure(fn, size: str, work: Path) -> dict:
    """Run fn(size, work) and return its dict plus wall_s, cpu_s, memory figures and items_per_s."""
    fd, log = tempfile.mkstemp(prefix="bench-forks-")
    os.close(fd)
    log = Path(log)

    def record_start():  # in each forked child: a fork copies the parent's page tables, its peak starts here
        with open(log, "a") as f:
            f.write(f"{_status_kb('VmRSS')}\n")

    os.register_at_fork(after_in_child=record_start)
    gc.collect()
    anon0, anon_peak, done = _status_kb("RssAnon"), [0], threading.Event()

    def sample_anon():
        while not done.wait(0.003):
            anon_peak[0] = max(anon_peak[0], _status_kb("RssAnon"))

    sampler = threading.Thread(target=sample_anon, daemon=True)
    sampler.start()
    base_kb = _status_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_peak()
    self0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = fn(size, work)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    anon_peak[0] = max(anon_peak[0], _status_kb("RssAnon"))
    self1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in ((self0, self1), (kids0, kids1)))
    peak_kb = _status_kb("VmHWM") if reset else max(_status_kb("VmHWM"), self1.ru_maxrss)  # ru_maxrss is in kB
    kid_kb = kids1.ru_maxrss  # the largest waited-for child, 0 without children
    kid_start_kb = _forked_start_kb(log)
    log.unlink()
    row = dict(out)
    if "items" not in row or "unit" not in row:
        raise ValueError(f"{fn.__qualname__} must return 'items' and 'unit', got {sorted(row)}")
    self_mb = max(0, peak_kb - base_kb) / 1024
    kids_mb = max(0, kid_kb - kid_start_kb) / 1024
    timed = row.get("timed_s") or wall
    row.update(wall_s=wall, cpu_s=cpu, baseline_mb=base_kb / 1024, peak_mb_above_baseline=self_mb,
               children_peak_mb=kids_mb, peak_mb=self_mb + kids_mb, peak_reset=reset,
               private_mb=max(0, anon_peak[0] - anon0) / 1024,
               items_per_s=row["items"] / timed if timed > 0 else 0.0)
    return row


def main(argv: list[str]) -> int:
    module, case, impl, size, work, out = argv
    mod = importlib.import_module(module if "." in module else f"bench.cases.{module}")
    row = measure(mod.CASES[case][impl], size, Path(work))
    row.update(module=module, case=case, impl=impl, size=size, threads=torch.get_num_threads())
    Path(out).write_text(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
