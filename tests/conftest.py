"""Test-wide settings and the shared end-to-end run.

Tiny models run fastest on one thread (subprocesses set their own). `tiny_run` runs the whole demo workflow once
per session on tiny settings; the end-to-end tests (local and SLURM) read its outputs.
"""
import pytest
import torch

from workflow_utils import learning_config, snakemake, tiny_config, write_config

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(workdir, config path) of a finished local `snakemake --cores 2` run of every target on tiny settings."""
    wd = tmp_path_factory.mktemp("tiny_run")
    cfg = write_config(wd / "tiny.yaml", tiny_config())
    snakemake(wd, "--cores", "2", config=cfg, timeout=900)
    return wd, cfg


@pytest.fixture(scope="session")
def learning_run(tmp_path_factory):
    """(workdir, config path) of the demo with shorter schedules, run to the tables: long enough to learn."""
    wd = tmp_path_factory.mktemp("learning_run")
    cfg = write_config(wd / "learning.yaml", learning_config())
    snakemake(wd, "--cores", "2", config=cfg, timeout=1800)
    return wd, cfg
