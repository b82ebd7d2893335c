"""The real workflow on the local one-node SLURM cluster of .ci/slurm-up (2 CPUs, 2 pretend GPUs), through the test
profile (tests/slurm-profile): the demo on tiny settings to the final tables, DDP over two SLURM tasks, and a
training job pre-empted with SIGTERM that resumes from its checkpoint on Snakemake's retry.

What costs time here is not the work but the jobs: a SLURM job of this workflow starts two Snakemakes (the
plugin's job-step executor, then one per rule under srun), about 5-7 s for a rule that runs in 1 s, with two at a
time on two CPUs, and the plugin's status checks back off by 10 s after each check that sees no job finish. The
whole demo from scratch (72 jobs) takes 4.5-6 min here. So the demo test starts from the local `tiny_run`'s
corpora up to the `extend_vocab` checkpoint (copied with their times: nothing upstream is out of date) and sends
the 30 jobs from the checkpoint on through SLURM, in about 2 min; RELM_SLURM_FULL_WORKFLOW=1 runs all 72 jobs
(about 5 min).
"""

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from slurm_cluster import (cancel, job_gres, job_info, job_output, job_state, rules_in_group_log, run_snakemake,
                           sbatch_wait, signal_job, slurm_cluster, slurm_group_logs, slurm_logs, stop_snakemake,
                           wait_job)  # noqa: F401
from workflow_utils import SNAKEFILE, tiny_config, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PAIR = "lx-hx"
TRAIN_RULES = ["pretrain", "mlm", "unmt"]
GPU_RULES = {*TRAIN_RULES, "translate"}  # gpu=1: the config's `gpus` (slurm_config)
RESULTS = ["results/scores.tsv", "results/bleu.md", "results/bleu.tex", "results/bleu.png", "results/compute.md",
           f"results/{PAIR}/scores.tsv", f"results/{PAIR}/curves.png"]
FULL = os.environ.get("RELM_SLURM_FULL_WORKFLOW", "") not in ("", "0")

# Jobs per rule of the tiny demo (one pair, three systems): from the extend_vocab checkpoint on, and before it.
FROM_CHECKPOINT = Counter(extend_vocab=1, binarize=5, pretrain=1, mlm=3, unmt=3, translate=6,
                          score=6, tables=1, pair_tables=1, curves=1, bars=1, compute=1)
# (fetch and fetch_train, 6 and 2 jobs, are local rules: they run in the Snakemake process, not as SLURM jobs.)
BEFORE_CHECKPOINT = Counter(synth=1, check_parallel=2, clean=2, tokenize=8, bpe_learn_hmr=1, bpe_learn_joint=1, bpe_apply=11,
                            vocab_hmr=1, vocab_lmr=1, vocab_joint=1, binarize=9)
# Small rules in group jobs (fewer Snakemake starts and status checks). The slurm-jobstep executor runs a group's
# jobs one after another (--jobs 1), and SLURM is asked for what the group's jobs need side by side, within
# --cores: without it a group of 5 one-thread jobs asks for 5 CPUs and never starts on this 2-CPU node. Each
# translate -> score pair is a group job of its own (6, each with one GPU); the tables and the bar chart make one.
# The RE-LM corpora (binarized once the checkpoint has run) make 2 group jobs of 3 and 2, but only when no
# binarize job runs before the checkpoint: Snakemake 9.27 fails (KeyError: binarize in DAG.update_ready, or "BUG:
# Out of jobs ready to be started") when a group's rule has jobs on both sides of a checkpoint.
GROUPS = ["--groups", "translate=eval", "score=eval", "tables=report", "pair_tables=report", "bars=report",
          *([] if FULL else ["binarize=bin"]),
          "--group-components", "report=10", *([] if FULL else ["bin=3"]), "--cores", "1"]


def slurm_config(**overrides):
    """The tiny demo config as the SLURM tests run it: one (pretend) GPU per training and translation job."""
    return {**tiny_config(), "gpus": {"train": 1, "translate": 1}, **overrides}


def output_files(wd):
    """Relative paths of the files under data/, models/, results/ (not the HTML report that test_e2e writes into
    tiny_run's directory, nor old runs' files moved aside as *.stale-N)."""
    wd = Path(wd)
    return {str(p.relative_to(wd)) for d in ("data", "models", "results") for p in (wd / d).rglob("*")
            if p.is_file() and p.name != "report.html" and ".stale-" not in p.name}


def seed_before_checkpoint(src, dst):
    """Copy a finished run's data/ and benchmarks/ (times kept), less everything from the extend_vocab checkpoint
    on: its sidecar and extended vocabulary, the RE-LM corpora binarized with it, the benchmarks of later rules."""
    for d in ("data", "benchmarks"):
        shutil.copytree(src / d, dst / d)
    later = [*dst.glob(f"data/{PAIR}/vocab.{PAIR}-ext*"), dst / f"data/{PAIR}/bin-relm",
             *dst.glob(f"benchmarks/binarize/{PAIR}.relm.*"),
             *(dst / "benchmarks" / rule for rule in (*TRAIN_RULES, "translate"))]
    for p in later:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def mlm_settings(**run):
    """MLM settings for `relm train mlm` on the HMR corpus of the tiny demo."""
    return {"model": {"dim": 32, "n_layers": 1, "n_heads": 2, "dropout": 0.0, "attention_dropout": 0.0,
                      "pre_norm": True},
            "bptt": 32, "batch_size": 16, "langs": ["hx"], "mlm_steps": ["hx"], "eval_langs": ["hx"],
            "run": {"threads": 1, "epoch_size": 320, "validation_metrics": "_valid_hx_mlm_ppl", **run}}


def wait_for_path_or_exit(path, proc, timeout):
    """Wait until `path` exists while the background Snakemake `proc` runs."""
    end = time.monotonic() + timeout
    while not Path(path).exists():
        assert proc.poll() is None, f"Snakemake exited ({proc.returncode}) before {path} appeared"
        assert time.monotonic() < end, f"{path} did not appear within {timeout}s"
        time.sleep(0.2)


def tail(path_or_text, n=6000):
    text = Path(path_or_text).read_text() if isinstance(path_or_text, Path) else path_or_text
    return text[-n:]


# --- the demo ---------------------------------------------------------------------------------------------------


def test_demo_workflow_through_slurm(slurm_cluster, tiny_run, tmp_path):
    """`snakemake --profile tests/slurm-profile` on the tiny demo: every job is a SLURM job that completes, the GPU
    rules get a GPU and still train on the CPU, the final tables and plots appear, and the outputs are the files
    of the local run."""
    local_wd, _ = tiny_run
    cfg = write_config(tmp_path / "tiny.yaml", slurm_config())
    expected = FROM_CHECKPOINT + BEFORE_CHECKPOINT if FULL else FROM_CHECKPOINT
    if not FULL:
        seed_before_checkpoint(local_wd, tmp_path)
    t0 = time.monotonic()
    r = run_snakemake(tmp_path, "-s", SNAKEFILE, "--configfile", cfg, *GROUPS, timeout=1800 if FULL else 1200,
                      env={"CUDA_VISIBLE_DEVICES": None})
    print(f"snakemake through SLURM ({sum(expected.values())} jobs): {time.monotonic() - t0:.0f}s")
    assert r.returncode == 0, tail(r.stdout)
    for path in RESULTS:
        assert (tmp_path / path).stat().st_size > 0, path

    # Every job went through sbatch: one SLURM job per rule job or group job, each named in its log.
    ran, kind = Counter(), {}
    for rule, jobs in slurm_logs(tmp_path).items():
        ran[rule] += len(jobs)
        kind.update({job: {rule} for job in jobs})
    for jobs in slurm_group_logs(tmp_path).values():
        for job, log in jobs.items():
            rules = rules_in_group_log(log)
            assert rules, tail(log)
            ran.update(rules)
            kind[job] = set(rules)
    assert ran == expected, f"jobs per rule: SLURM ran {dict(ran)}, expected {dict(expected)}"

    for job, rules in sorted(kind.items(), key=lambda kv: int(kv[0])):
        info = job_info(job)
        if not info and FULL and not rules & GPU_RULES:
            continue  # the first jobs of the long run: the controller forgets a job 300 s after it ended
        assert info.get("JobState") == "COMPLETED", (rules, info)
        assert info["WorkDir"] == str(tmp_path)
        # GPU rules (alone or in a group job) ask SLURM for one GPU and get it; nothing else asks for one.
        gpu = bool(rules & GPU_RULES)
        assert (info.get("TresPerJob") == "gres:gpu:1") == gpu, (rules, info.get("TresPerJob"))
        assert job_gres(job) == ("gpu:1" if gpu else ""), rules

    # The pretend GPU is no CUDA device: every training run fell back to the CPU, one process each.
    train_logs = [log for rule in TRAIN_RULES for log in sorted((tmp_path / "logs" / rule).glob("*.log"))]
    assert len(train_logs) == sum(expected[rule] for rule in TRAIN_RULES)
    for log in train_logs:
        assert "device cpu, world 1," in log.read_text(), tail(log)

    # The same files as the local run (data, every run directory's files, results).
    local, here = output_files(local_wd), output_files(tmp_path)
    assert here == local, f"only here: {sorted(here - local)}; only in the local run: {sorted(local - here)}"


# --- several tasks ----------------------------------------------------------------------------------------------


def test_mlm_training_with_two_slurm_tasks(slurm_cluster, tiny_run, tmp_path):
    """`sbatch --ntasks=2` + `srun relm train mlm`: two ranks (SLURM_PROCID 0 and 1) train one model with DDP
    (gloo on the CPU) and both get to the end."""
    data = tiny_run[0] / "data" / "hx"
    steps = 20
    (tmp_path / "mlm.yaml").write_text(json.dumps(mlm_settings(max_steps=steps, checkpoint_every=10)))
    train = (f"relm train mlm --run-dir run --config mlm.yaml --vocab {data}/vocab.hx "
             f"--train hx={data}/bin-hmr/train.hx.json --valid hx={data}/bin-hmr/valid.hx.json "
             f"--out model.pt --metrics metrics.jsonl")
    script = f"#!/bin/bash\nsrun bash -c '{train}; echo \"rank $SLURM_PROCID of $SLURM_NTASKS: exit $?\"'\n"
    jobid, state = sbatch_wait(script, timeout=180, args=["--ntasks=2"], cwd=tmp_path,
                               env={"CUDA_VISIBLE_DEVICES": None})
    out = job_output(jobid)
    assert state == "COMPLETED", (job_info(jobid), tail(out))
    assert job_info(jobid)["ExitCode"] == "0:0"
    assert sorted(line for line in out.splitlines() if line.startswith("rank ")) == [
        "rank 0 of 2: exit 0", "rank 1 of 2: exit 0"], tail(out)
    assert "device cpu, world 2," in out, tail(out)  # rank 0 logs for both
    assert f"max_steps {steps} reached" in out
    assert (tmp_path / "model.pt").stat().st_size > 0
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["step"] == steps
    # The resume checkpoint holds the state of each rank (gathered from both): each drew its own random numbers
    # and read its own batches, as many as the steps.
    from relm.model.checkpoint import safe_load

    ranks = safe_load(tmp_path / "run" / "checkpoint.pt")["ranks"]
    assert len(ranks) == 2
    assert ranks[0]["trainer"] != ranks[1]["trainer"]
    assert [r["iterators"]["mlm:hx"]["pos"] for r in ranks] == [steps, steps]


def test_pretrain_rule_over_two_slurm_tasks_through_the_plugin(slurm_cluster, tiny_run, tmp_path):
    """Several tasks (and nodes) per training job through the plugin's own fields, in a site profile added after the
    shipped one: `tasks_per_node: 2` and `mpi: srun` make the rule start `srun relm train mlm` inside one SLURM job
    of two tasks, and the two ranks train one model (DDP, gloo on the CPU)."""
    local_wd, _ = tiny_run
    steps = 20
    cfg = tiny_config()
    cfg["pretrain"]["run"].update(max_steps=steps, checkpoint_every=10, stopping_criterion="")
    cfg = write_config(tmp_path / "ranks.yaml", cfg)
    for d in ("data", "benchmarks"):
        shutil.copytree(local_wd / d, tmp_path / d)
    site = tmp_path / "site"
    site.mkdir()
    (site / "config.yaml").write_text("set-resources:\n  pretrain:\n    tasks_per_node: 2\n    mpi: \"'srun'\"\n"
                                      "    mem_mb: 1000\n")
    r = run_snakemake(tmp_path, "models/hx/mlm/model.pt", "--profile", site, "-s", SNAKEFILE, "--configfile", cfg,
                      "--forcerun", "pretrain", timeout=600, env={"CUDA_VISIBLE_DEVICES": None})
    assert r.returncode == 0, tail(r.stdout)
    assert "srun --nodes=1 --ntasks-per-node=2 relm train mlm" in r.stdout
    (job,) = slurm_logs(tmp_path)["pretrain"]
    info = job_info(job)
    assert (info["JobState"], info["NumTasks"]) == ("COMPLETED", "2"), info
    log = (tmp_path / "logs/pretrain/hx.log").read_text()
    assert "device cpu, world 2," in log and f"max_steps {steps} reached" in log, tail(log)
    assert json.loads((tmp_path / "models/hx/mlm/metrics.jsonl").read_text().splitlines()[-1])["step"] == steps


# --- pre-emption --------------------------------------------------------------------------------------------------


def test_preempted_pretraining_resumes_on_snakemake_retry(slurm_cluster, tiny_run, tmp_path):
    """Rule `pretrain` as a SLURM job, sent SIGTERM (what --signal=TERM@300 and pre-emption do) once it has written a
    checkpoint: the trainer writes a resume checkpoint and stops, the job fails, Snakemake submits it again, and
    the second job resumes from that checkpoint and trains to the configured last step."""
    local_wd, _ = tiny_run
    steps = 300  # about 10 s of training here: the signal (0.2 s after the first checkpoint) comes well before
    cfg = slurm_config()
    cfg["pretrain"]["run"].update(max_steps=steps, checkpoint_every=10, stopping_criterion="")
    cfg = write_config(tmp_path / "long.yaml", cfg)
    for d in ("data", "benchmarks"):
        shutil.copytree(local_wd / d, tmp_path / d)
    shutil.rmtree(tmp_path / "benchmarks" / "pretrain")
    run_dir, log = tmp_path / "models/hx/mlm", tmp_path / "logs/pretrain/hx.log"

    t0 = time.monotonic()
    sm = run_snakemake(tmp_path, "models/hx/mlm/model.pt", "-s", SNAKEFILE, "--configfile", cfg, timeout=900,
                       background=True, env={"CUDA_VISIBLE_DEVICES": None})
    try:
        wait_for_path_or_exit(run_dir / "checkpoint.pt", sm, 150)
        (first,) = slurm_logs(tmp_path)["pretrain"]
        signal_job(first, "TERM")
        assert wait_job(first, 60) == "FAILED"
        # Read the first attempt's log before the retry's shell command overwrites it (seconds later: the next
        # status check, a new job, two Snakemake starts).
        first_log = log.read_text()
        status = stop_snakemake(sm, timeout=600)
    finally:
        stop_snakemake(sm, timeout=0)  # still running only if something above failed
        for job in slurm_logs(tmp_path).get("pretrain", {}):
            if job_state(job) in ("PENDING", "RUNNING"):
                cancel(job)
    print(f"pre-empted pretraining: {time.monotonic() - t0:.0f}s")
    assert status == 0, tail(tmp_path / "snakemake.out")

    # The trainer caught SIGTERM, wrote a checkpoint and chose exit status 75; SLURM records the exit status of
    # the job-step Snakemake around it (1), as the rule's shell was ended by the same signal.
    marker = "signal SIGTERM: checkpoint written at step "
    assert marker in first_log and "exiting with status 75" in first_log, tail(first_log)
    stopped_at = int(first_log.split(marker)[1].split()[0])
    assert 0 < stopped_at < steps

    jobs = sorted(slurm_logs(tmp_path)["pretrain"], key=int)
    assert len(jobs) == 2, jobs  # Snakemake's retry (retries: 2 in the profile) is a second SLURM job
    infos = [job_info(job) for job in jobs]
    assert [i["JobState"] for i in infos] == ["FAILED", "COMPLETED"], infos
    assert infos[0]["ExitCode"] != "0:0" and infos[1]["ExitCode"] == "0:0"
    assert all(i.get("TresPerJob") == "gres:gpu:1" for i in infos)

    # The retry resumed where the signal stopped the first job and trained on to max_steps; the metrics history
    # runs through both jobs without a gap or a repeat.
    text = log.read_text()
    assert text.startswith(f"resuming from models/hx/mlm/checkpoint.pt: step {stopped_at},"), tail(text)
    assert f"max_steps {steps} reached" in text, tail(text)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(len(history)))
    assert history[-1]["step"] == steps
    assert (run_dir / "model.pt").stat().st_size > 0
