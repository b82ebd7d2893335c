"""Results that cannot go stale, on the real workflow: when Snakemake reruns a training job, the job trains again;
it never hands back the model of an earlier run (relm.train.resume: a run's identity is the content of its inputs,
and a finished run whose delivered model is gone is a forced rerun).

Starts from a copy of the session's `tiny_run` (times kept: nothing is out of date), then
  (a) `snakemake --forcerun unmt`: every UNMT model is trained again from scratch (not "already finished"), and
      bit for bit the same (training is deterministic on the CPU);
  (b) one line of the HMR training corpus changes at the same path: every model downstream of it is retrained on the
      new data (other weights) and the tables are computed again.
"""
import shutil

import pytest
import torch

from workflow_utils import snakemake

pytestmark = pytest.mark.slow

PAIR, SYSTEMS = "lx-hx", ["xlm", "relm", "relm_adapters"]
MLM_RUNS = ["models/hx/mlm"] + [f"models/{PAIR}/{s}/seed0/mlm" for s in SYSTEMS]
UNMT_RUNS = [f"models/{PAIR}/{s}/seed0/unmt" for s in SYSTEMS]
LOGS = {"models/hx/mlm": "logs/pretrain/hx.log",
        **{f"models/{PAIR}/{s}/seed0/{st}": f"logs/{st}/{PAIR}.{s}.seed0.log" for s in SYSTEMS for st in ("mlm", "unmt")}}


def weights(path) -> dict:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    return {f"{m}.{k}": v for m in ("model", "encoder", "decoder") if m in ck for k, v in ck[m].items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def state(wd) -> dict:
    return {run: (weights(wd / run / "model.pt"), (wd / run / "model.pt").stat().st_mtime_ns)
            for run in MLM_RUNS + UNMT_RUNS}


@pytest.fixture
def workdir(tiny_run, tmp_path):
    src, cfg = tiny_run
    wd = tmp_path / "wd"
    shutil.copytree(src, wd, symlinks=True)  # copy2: modification times kept, so Snakemake sees nothing to do
    return wd, cfg


def test_reruns_retrain(workdir):
    wd, cfg = workdir
    before = state(wd)
    scores_t = (wd / "results/scores.tsv").stat().st_mtime_ns

    # (a) a forced rerun of the UNMT rule trains again: fresh runs (deterministic: the same weights), not the old
    # files. Only the models are asked for (translation and tables follow in (b)).
    snakemake(wd, "--cores", "2", *(f"{run}/model.pt" for run in UNMT_RUNS), "--forcerun", "unmt", config=cfg)
    forced = state(wd)
    for run in UNMT_RUNS:
        log = (wd / LOGS[run]).read_text()
        assert "a forced rerun" in log and "starting fresh" in log and "end of epoch" in log, log[-2000:]
        assert "already finished" not in log and "resuming" not in log
        assert (wd / run / "checkpoint.pt.stale-1").is_file()
        assert forced[run][1] != before[run][1] and same(forced[run][0], before[run][0]), run
    for run in MLM_RUNS:
        assert forced[run][1] == before[run][1], run  # upstream untouched

    # (b) new content at the same path: one line of the HMR training corpus changes
    raw = wd / "data/hx/raw/train.hx"
    lines = raw.read_text().splitlines(keepends=True)
    lines[0] = lines[1]
    raw.write_text("".join(lines))
    snakemake(wd, "--cores", "2", config=cfg)
    after = state(wd)
    for run in MLM_RUNS + UNMT_RUNS:
        log = (wd / LOGS[run]).read_text()
        assert "inputs changed:" in log and "starting fresh" in log and "already finished" not in log, log[-2000:]
        assert not same(after[run][0], forced[run][0]), f"{run}: the model did not change"
    assert "train.hx" in (wd / LOGS["models/hx/mlm"]).read_text().split("starting fresh")[0]
    assert (wd / "results/scores.tsv").stat().st_mtime_ns != scores_t
