"""Test-wide settings and the shared end-to-end runs.

Tiny models run fastest on one thread (subprocesses set their own). `tiny_run` runs the whole demo workflow once
per session on tiny settings (seconds of training); `learning_run` runs the demo with shorter schedules, long
enough for every system to learn. The end-to-end tests (local and SLURM) read their outputs. Their time limits
only stop a hung run inside CI's 90 minutes: a loaded machine must not trip them (the learning run takes ~12
minutes on 2 idle cores).
"""
import pytest
import torch

from workflow_utils import learning_config, snakemake, tiny_config, write_config

torch.set_num_threads(1)


def _run_all(tmp_path_factory, name: str, cfg: dict, timeout: int):
    wd = tmp_path_factory.mktemp(name)
    path = write_config(wd / f"{name}.yaml", cfg)
    snakemake(wd, "--cores", "2", config=path, timeout=timeout)
    return wd, path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(workdir, config path) of a finished local `snakemake --cores 2` run of every target on tiny settings."""
    return _run_all(tmp_path_factory, "tiny_run", tiny_config(), timeout=2700)


@pytest.fixture(scope="session")
def learning_run(tmp_path_factory):
    """(workdir, config path) of the demo with shorter schedules, run to the tables: long enough to learn."""
    return _run_all(tmp_path_factory, "learning_run", learning_config(), timeout=4500)
