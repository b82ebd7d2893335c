"""Helpers for tests that run the real Snakemake workflow in a temporary directory."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"


def demo_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def tiny_config(**overrides) -> dict:
    """The demo config shrunk to seconds: small corpora, small BPE, a very small model, few steps."""
    cfg = copy.deepcopy(demo_config())
    cfg["synthetic"]["demo"].update(n_hmr=3000, n_lmr=1000, n_valid=60, n_test=60)
    cfg["bpe"] = {"hmr_merges": 300, "joint_merges": 300}
    cfg["model"].update(dim=32, n_layers=1, n_heads=2)
    cfg["mlm"]["bptt"] = 32
    cfg["mlm"]["run"].update(epoch_size=640, max_steps=40, checkpoint_every=20)
    for system in ("xlm", "relm", "relm_adapters"):
        cfg["mlm_systems"][system]["run"]["max_steps"] = 40
    cfg["mlm_systems"]["relm_adapters"]["model"]["adapter_size"] = 8
    cfg["unmt"]["tokens_per_batch"] = 300
    cfg["unmt"]["run"].update(epoch_size=320, max_steps=24, checkpoint_every=12)
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def learning_config() -> dict:
    """The demo with shorter schedules and 200-line eval sets: every system learns to translate above the copy
    baseline in a few CPU minutes (the end-to-end learning test)."""
    cfg = copy.deepcopy(demo_config())
    cfg["synthetic"]["demo"].update(n_hmr=50000, n_valid=200, n_test=200)
    cfg["mlm"]["run"]["epoch_size"] = 6400  # an evaluation every 200 steps
    cfg["pretrain"]["run"]["max_steps"] = 800
    cfg["mlm_systems"]["xlm"]["run"]["max_steps"] = 1000
    for system in ("xlm", "relm", "relm_adapters"):
        cfg["mlm_systems"][system]["run"]["max_steps"] = 400
    cfg["unmt"]["run"].update(max_steps=1000, epoch_size=6400)  # 1000 updates of 1000 tokens, evaluated every 200
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, config: Path | None = None, timeout: int = 600,
              check: bool = True) -> subprocess.CompletedProcess:
    """Run the real snakemake on our Snakefile in `workdir` (output captured, bounded in time)."""
    cmd = ["timeout", "-k", "10", str(timeout), sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE),
           "-d", str(workdir)]
    if config is not None:
        cmd += ["--configfile", str(config)]
    cmd += list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}): {' '.join(cmd)}\n"
                             f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc
