"""The SLURM side: the Snakemake profiles (site, test, workstation) and, on the local one-node cluster of
.ci/slurm-up, jobs with pretend GPUs, several tasks under srun, and a Snakemake job that is pre-empted with
SIGTERM, exits 75 after writing a checkpoint and resumes on its retry."""

import json
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from slurm_cluster import (REPO, SITE_PROFILE, TEST_PROFILE, job_info, job_output, run_snakemake, sbatch,
                           sbatch_wait, signal_job, slurm_cluster, slurm_logs, stop_snakemake, wait_for_path,
                           wait_job)  # noqa: F401

LOCAL_PROFILE = REPO / "profiles" / "local"
PROFILES = {"site": SITE_PROFILE, "test": TEST_PROFILE, "local": LOCAL_PROFILE}
GPU_RULES = ["pretrain", "mlm", "unmt", "translate"]
TRAIN_RULES = ["pretrain", "mlm", "unmt"]
# What the test profile may change: sacct -> squeue, faster status checks, all logs kept, less memory.
MAY_DIFFER = {"slurm-status-command", "slurm-init-seconds-before-status-checks", "seconds-between-status-checks",
              "slurm-keep-successful-logs", "default-resources.mem_mb",
              *(f"set-resources.{rule}.mem_mb" for rule in GPU_RULES)}
PY = sys.executable


def load(profile):
    return yaml.safe_load((profile / "config.yaml").read_text())


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# --- profiles (no cluster needed) -------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROFILES)
def test_profile_is_read_by_snakemake(name):
    """Snakemake's own profile reader turns the file into command-line settings; what a job needs (GPUs, memory,
    the checkpoint signal) is the workflow's (rule resources from the config), not the profiles'."""
    ProfileConfigFileParser = pytest.importorskip("snakemake.profiles").ProfileConfigFileParser

    with open(PROFILES[name] / "config.yaml") as f:
        args = ProfileConfigFileParser().parse(f)
    assert not [r for r in args.get("set-resources", []) if ":gpu=" in r or ":slurm_extra=" in r]
    if name != "local":
        assert args["executor"] == "slurm"
        assert args["slurm-requeue"] in (True, "True", "true")  # SLURM requeues pre-empted jobs itself


def test_test_profile_differs_from_site_profile_only_where_allowed():
    site, test = flat(load(SITE_PROFILE)), flat(load(TEST_PROFILE))
    differ = {k for k in site.keys() | test.keys() if site.get(k) != test.get(k)}
    assert differ <= MAY_DIFFER, f"not allowed to differ: {sorted(differ - MAY_DIFFER)}"
    assert "slurm-status-command" not in site  # real clusters: the plugin's default, sacct
    assert test["slurm-status-command"] == "squeue"  # no slurmdbd on the test cluster


def test_site_profile_is_found_from_repo_root():
    """`snakemake --profile slurm` looks for ./slurm/config.yaml."""
    assert (REPO / "slurm" / "config.yaml").is_file()
    assert load(SITE_PROFILE)["retries"] >= 1  # pre-empted training jobs resume on a retry


SITE_KEYS = """\
default-resources:  # replaces the shipped profile's default-resources as a whole: repeat runtime and mem_mb
  runtime: 180
  mem_mb: 6000
  slurm_partition: "'batch'"
  slurm_account: "'nlp'"
set-resources:
  pretrain: &gpu
    gpu_model: "'a100'"
  mlm: *gpu
  unmt: *gpu
  translate: *gpu
"""


def planned_resources(out):
    """{rule: [resources line of each planned job]} from a dry run's output."""
    plan = {}
    for block in out.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0].strip()
        line = next((ln for ln in block.splitlines() if ln.strip().startswith("resources:")), "")
        plan.setdefault(rule, []).append(dict(kv.split("=", 1) for kv in line.split(":", 1)[1].strip().split(", "))
                                         if line else {})
    return plan


def test_shipped_profile_combines_with_a_site_profile(tmp_path):
    """`--profile slurm --profile <site>`: the site's partition, account and GPU model join what the workflow
    asks for (GPUs and memory from the config, the checkpoint signal); the shipped profile's own keys stay."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "config.yaml").write_text(SITE_KEYS)
    cfg = tmp_path / "gpus.yaml"
    cfg.write_text("gpus: {train: 2, translate: 1}\nmem_mb: {train: 30000}\n")
    r = subprocess.run([PY, "-m", "snakemake", "all", "--profile", str(SITE_PROFILE), "--profile", str(site),
                        "--configfile", str(REPO / "config" / "config.yaml"), str(cfg), "-n", "-d",
                        str(tmp_path / "wd")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    plan = planned_resources(r.stdout)
    for rule in TRAIN_RULES:
        for res in plan[rule]:
            assert (res["gpu"], res["mem_mb"], res["gpu_model"]) == ("2", "30000", "a100"), (rule, res)
            assert res["slurm_extra"] == "--signal=TERM@300" and res["slurm_partition"] == "batch", res
    for res in plan["translate"]:
        assert (res["gpu"], res["mem_mb"], res["gpu_model"]) == ("1", "16000", "a100"), res
    for rule in ("tokenize", "bpe_learn_joint", "score"):
        for res in plan[rule]:
            assert "gpu" not in res and "gpu_model" not in res, (rule, res)
            assert (res["slurm_partition"], res["slurm_account"], res["mem_mb"]) == ("batch", "nlp", "6000"), res
    assert "torchrun --standalone --nproc-per-node=2" in r.stdout  # 2 GPUs per training job: torchrun


# --- the cluster ----------------------------------------------------------------------------------------


@pytest.mark.slurm
def test_node_is_idle_with_two_gpus(slurm_cluster):
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T %G"], capture_output=True, text=True, check=True)
    node, state, gres = r.stdout.split()
    assert (node, state) == (slurm_cluster.node, "idle")
    assert gres.startswith("gpu:2")


@pytest.mark.slurm
@pytest.mark.parametrize("gpus,visible", [(0, None), (1, "0"), (2, "0,1")])
def test_pretend_gpus_are_visible(slurm_cluster, tmp_path, gpus, visible):
    script = f"#!/bin/bash\n{PY} -c 'import os; print(os.environ.get(\"CUDA_VISIBLE_DEVICES\"))'\n"
    jobid, state = sbatch_wait(script, args=[f"--gpus={gpus}"] if gpus else [], cwd=tmp_path,
                               env={"CUDA_VISIBLE_DEVICES": None})
    assert state == "COMPLETED", job_info(jobid)
    assert job_output(jobid).strip() == str(visible)


@pytest.mark.slurm
@pytest.mark.parametrize("ntasks", [1, 2])
def test_srun_starts_one_rank_per_task(slurm_cluster, tmp_path, ntasks):
    script = (f"#!/bin/bash\nsrun {PY} -c 'import os; "
              f"print(\"rank\", os.environ[\"SLURM_PROCID\"], os.environ[\"SLURM_NTASKS\"])'\n")
    jobid, state = sbatch_wait(script, args=[f"--ntasks={ntasks}"], cwd=tmp_path)
    assert state == "COMPLETED", job_info(jobid)
    lines = sorted(line for line in job_output(jobid).splitlines() if line.startswith("rank"))
    assert lines == [f"rank {i} {ntasks}" for i in range(ntasks)]


@pytest.mark.slurm
@pytest.mark.parametrize("status,state", [(0, "COMPLETED"), (3, "FAILED"), (75, "FAILED")])
def test_job_state_and_exit_code(slurm_cluster, tmp_path, status, state):
    jobid, got = sbatch_wait(f"#!/bin/bash\nexit {status}\n", cwd=tmp_path)
    assert got == state
    assert job_info(jobid)["ExitCode"] == f"{status}:0"


TRAINER = """\
import os, signal, sys, time
out, ckpt = sys.argv[1], sys.argv[1] + ".ckpt"
def stop(sig, frame):
    open(ckpt, "w").write(signal.Signals(sig).name)   # a resume checkpoint
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGUSR1, stop)
resumed = open(ckpt).read() if os.path.exists(ckpt) else None
open(out + ".started", "a").write(f"{os.environ.get('CUDA_VISIBLE_DEVICES')} {resumed}\\n")
if resumed is None:
    time.sleep(120)                                     # until pre-empted
open(out, "w").write(f"resumed after {resumed}")
"""


@pytest.mark.slurm
def test_signal_reaches_the_job_steps(slurm_cluster, tmp_path):
    """What --signal=TERM@T (and a time limit or pre-emption) does: SIGTERM to the processes of the steps."""
    (tmp_path / "trainer.py").write_text(TRAINER)
    jobid = sbatch(f"#!/bin/bash\nsrun {PY} trainer.py out\n", cwd=tmp_path)
    wait_for_path(tmp_path / "out.started", 30)
    signal_job(jobid, "TERM")
    assert wait_job(jobid, 30) == "FAILED"
    assert job_info(jobid)["ExitCode"] == "75:0"
    assert (tmp_path / "out.ckpt").read_text() == "SIGTERM"


@pytest.mark.slurm
def test_snakemake_cpu_and_gpu_jobs_go_through_sbatch(slurm_cluster, tmp_path):
    """A CPU rule and a GPU rule (gpu=1) run as SLURM jobs."""
    (tmp_path / "Snakefile").write_text(textwrap.dedent(f"""
        ENV = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"
        rule all:
            input: "cpu.json", "gpu.json"
        rule prep:
            output: "cpu.json"
            shell: "{PY} -c \\"{{ENV}}\\" {{output}}"
        rule unmt:
            output: "gpu.json"
            resources: gpu=1
            shell: "{PY} -c \\"{{ENV}}\\" {{output}}"
        """))
    t0 = time.monotonic()
    r = run_snakemake(tmp_path, timeout=600, env={"CUDA_VISIBLE_DEVICES": None})
    assert r.returncode == 0, r.stdout
    print(f"snakemake: {time.monotonic() - t0:.1f}s")
    logs = slurm_logs(tmp_path)
    assert set(logs) == {"prep", "unmt"}, logs
    (cpu_job,), (gpu_job,) = logs["prep"], logs["unmt"]
    for jobid in (cpu_job, gpu_job):
        assert job_info(jobid)["JobState"] == "COMPLETED"
    assert job_info(gpu_job)["TresPerJob"] == "gres:gpu:1" and "gpu" not in job_info(cpu_job).get("TresPerJob", "")
    assert "mem=1000M" in job_info(gpu_job)["TRES"]  # the test profile's set-resources
    cpu, gpu = (json.loads((tmp_path / f).read_text()) for f in ("cpu.json", "gpu.json"))
    assert gpu.get("CUDA_VISIBLE_DEVICES") == "0"
    assert "CUDA_VISIBLE_DEVICES" not in cpu


def run_trainer_rule(tmp_path, interrupt):
    """Snakemake through the test profile with one GPU rule `pretrain` running TRAINER; once the job has started,
    `interrupt(jobid)`. Returns Snakemake's exit status."""
    (tmp_path / "trainer.py").write_text(TRAINER)
    (tmp_path / "Snakefile").write_text(textwrap.dedent(f"""
        rule pretrain:
            output: "model.txt"
            resources: gpu=1
            shell: "{PY} trainer.py {{output}}"
        """))
    sm = run_snakemake(tmp_path, timeout=600, background=True)
    try:
        wait_for_path(tmp_path / "model.txt.started", 90)
        (job,) = slurm_logs(tmp_path)["pretrain"]
        interrupt(job)
        return stop_snakemake(sm, timeout=500)
    finally:
        stop_snakemake(sm, timeout=0)  # still running only if something above failed


@pytest.mark.slurm
def test_preempted_training_job_resumes_on_retry(slurm_cluster, tmp_path):
    """SIGTERM -> checkpoint, exit 75 -> the job fails -> Snakemake retries it (attempt 2) -> it resumes.
    The checkpoint is not a declared output: Snakemake deletes the outputs of a failed job."""
    status = run_trainer_rule(tmp_path, lambda job: signal_job(job, "TERM"))
    assert status == 0, (tmp_path / "snakemake.out").read_text()
    assert (tmp_path / "model.txt").read_text() == "resumed after SIGTERM"
    assert (tmp_path / "model.txt.started").read_text().splitlines() == ["0 None", "0 SIGTERM"]
    jobs = slurm_logs(tmp_path)["pretrain"]
    assert len(jobs) == 2
    assert [job_info(j)["JobState"] for j in sorted(jobs, key=int)] == ["FAILED", "COMPLETED"]


@pytest.mark.slurm
def test_requeued_training_job_resumes_in_the_same_slurm_job(slurm_cluster, tmp_path):
    """Pre-emption with requeue (the profiles' `slurm-requeue: true`, sbatch --requeue): SLURM stops the running job
    with SIGTERM and queues it again under the same job id; Snakemake keeps waiting (no retry of its own) and the
    job's second run resumes from the checkpoint written at the signal."""
    status = run_trainer_rule(tmp_path, lambda job: subprocess.run(["scontrol", "requeue", job], check=True,
                                                                   timeout=30))
    (job,) = slurm_logs(tmp_path)["pretrain"]
    assert status == 0, (tmp_path / "snakemake.out").read_text()
    assert (tmp_path / "model.txt").read_text() == "resumed after SIGTERM"
    assert (tmp_path / "model.txt.started").read_text().splitlines() == ["0 None", "0 SIGTERM"]
    assert list(slurm_logs(tmp_path)["pretrain"]) == [job]  # one SLURM job: SLURM's requeue, not a Snakemake retry
    info = job_info(job)
    assert (info["JobState"], info["Restarts"], info["Requeue"]) == ("COMPLETED", "1", "1"), info
