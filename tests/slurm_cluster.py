"""A one-node SLURM cluster for tests: the session fixture `slurm_cluster` and helpers to submit, watch and signal
jobs and to run Snakemake through the test profile (tests/slurm-profile).

The fixture reuses a running cluster or starts one with .ci/slurm-up and always stops it with .ci/slurm-down.
RELM_SLURM selects what it does:
  unset/auto  reuse the cluster of .ci/slurm-up if its daemons run (left running), else start one (and stop it)
  running     use whatever cluster `sinfo` reaches (fail if none answers); never start or stop one
  start       always start a fresh one, and stop it at the end
  off         skip every test that needs the cluster
Without the SLURM binaries, or without root to start the daemons, the tests that need the cluster are skipped.

Job helpers work while the controller remembers a job (MinJobAge=300 s on the test cluster); they need no
accounting database. With pytest-xdist every worker would start its own cluster: start it once beforehand and
set RELM_SLURM=running.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SITE_PROFILE = REPO / "slurm"
TEST_PROFILE = REPO / "tests" / "slurm-profile"
PID_FILES = {"munged": "/run/munge/munged.pid", "slurmctld": "/run/slurmctld.pid", "slurmd": "/run/slurmd.pid"}
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}


@dataclass(frozen=True)
class SlurmCluster:
    node: str  # the node jobs run on
    started_here: bool  # the fixture started it and will stop it
    startup_s: float  # seconds .ci/slurm-up took (0 when reused)


def _sh(args, timeout=30, check=True, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} exited with {r.returncode}:\n{r.stdout}{r.stderr}")
    return r


def _daemon_running(name):
    try:
        pid = int(Path(PID_FILES[name]).read_text())
        return Path(f"/proc/{pid}/comm").read_text().strip() == name
    except (OSError, ValueError):
        return False


def node_states():
    """{node: state} as sinfo reports them (state e.g. idle, mixed, allocated, drained); {} if sinfo fails."""
    try:
        r = _sh(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split()[:2] for line in r.stdout.splitlines() if line.strip()) if r.returncode == 0 else {}


def _usable_node():
    return next((n for n, s in node_states().items() if s.rstrip("*") in ("idle", "mixed", "allocated")), None)


@pytest.fixture(scope="session")
def slurm_cluster():
    mode = os.environ.get("RELM_SLURM", "auto")
    if mode not in ("auto", "running", "start", "off"):
        pytest.fail(f"RELM_SLURM={mode!r}: expected auto, running, start or off")
    if mode == "off":
        pytest.skip("RELM_SLURM=off")
    if mode == "running":
        node = _usable_node()
        if node is None:
            pytest.fail(f"RELM_SLURM=running but no usable SLURM node answers: {node_states()}")
        yield SlurmCluster(node, started_here=False, startup_s=0.0)
        return
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo")
               if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        pytest.skip(f"SLURM not installed (missing {', '.join(missing)}; see .ci/slurm-install)")
    if mode == "auto" and all(map(_daemon_running, PID_FILES)) and _usable_node():
        yield SlurmCluster(_usable_node(), started_here=False, startup_s=0.0)
        return
    if os.geteuid() != 0:
        pytest.skip("starting the SLURM test cluster needs root (or start it and set RELM_SLURM=running)")
    t0 = time.monotonic()
    try:
        up = _sh(["bash", str(REPO / ".ci/slurm-up")], timeout=120, check=False)
        if up.returncode != 0:
            pytest.fail(f".ci/slurm-up failed ({up.returncode}):\n{up.stdout}{up.stderr}")
        yield SlurmCluster(_usable_node(), started_here=True, startup_s=time.monotonic() - t0)
    finally:
        down = _sh(["bash", str(REPO / ".ci/slurm-down")], timeout=120, check=False)
        if down.returncode != 0:
            print(f".ci/slurm-down failed ({down.returncode}):\n{down.stdout}{down.stderr}", file=sys.stderr)


# --- jobs --------------------------------------------------------------------------------------------------


def sbatch(script, *args, cwd=None, output="slurm-%j.out", env=None):
    """Submit `script` (text starting with #!) with extra sbatch `args`; returns the job id. The job runs in
    `cwd` (default: the current directory) with this process' environment plus `env` (None removes a
    variable); its output goes to `output` there."""
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    r = _sh(["sbatch", "--parsable", "-o", output, *map(str, args)], input=script, cwd=cwd, env=env)
    return r.stdout.strip().split(";")[0]


def job_info(jobid):
    """The controller's record of a job (`scontrol show job`) as a dict, e.g. JobState, ExitCode ("0:0" =
    status:signal), Restarts, StdOut, TRES; {} once the controller has forgotten it."""
    r = _sh(["scontrol", "show", "job", "-o", str(jobid)], timeout=10, check=False)
    if r.returncode != 0 or not r.stdout.strip():
        return {}
    info, key = {}, None
    for token in r.stdout.split("\n")[0].split():
        k, eq, v = token.partition("=")
        if eq and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_:/]*", k):
            info[key := k] = v
        elif key is not None:  # a value with spaces (e.g. Command=..., Comment=...)
            info[key] += " " + token
    return info


def job_state(jobid):
    """JobState of a job, e.g. PENDING, RUNNING, COMPLETED, FAILED, CANCELLED; "" if unknown."""
    return job_info(jobid).get("JobState", "")


def wait_job(jobid, timeout=60, states=TERMINAL, poll=0.2):
    """Wait until the job is in one of `states` (default: finished) and return that state. On timeout the job
    is cancelled and TimeoutError raised."""
    end = time.monotonic() + timeout
    while (state := job_state(jobid)) not in states:
        if time.monotonic() > end:
            cancel(jobid)
            raise TimeoutError(f"job {jobid} still {state or 'unknown'} after {timeout}s: {job_info(jobid)}")
        time.sleep(poll)
    return state


def sbatch_wait(script, timeout=60, args=(), cwd=None, output="slurm-%j.out", env=None):
    """sbatch + wait_job: returns (jobid, final state)."""
    jobid = sbatch(script, *args, cwd=cwd, output=output, env=env)
    return jobid, wait_job(jobid, timeout)


def job_output(jobid):
    """Text of the job's stdout file."""
    return Path(job_info(jobid)["StdOut"]).read_text()


def signal_job(jobid, sig="TERM", batch=False):
    """Send a signal as SLURM does before a time limit or on pre-emption: to the processes of every job step
    (what --signal=SIG@T does), or with batch=True only to the batch shell (--signal=B:SIG@T)."""
    _sh(["scancel", f"--signal={sig}", *(["--batch"] if batch else []), str(jobid)])


def cancel(jobid):
    _sh(["scancel", str(jobid)], check=False)


# --- Snakemake ---------------------------------------------------------------------------------------------


def run_snakemake(workdir, *args, profile=TEST_PROFILE, timeout=300, env=None, background=False):
    """Run Snakemake in `workdir` (it needs a Snakefile there or `-s` in args) through a profile (a directory),
    under `timeout -k 10` since a hung Snakemake can survive SIGTERM. `env` adds variables (None removes one).
    Returns the CompletedProcess (stdout and stderr together in .stdout). background=True returns the Popen at
    once, its output going to `workdir`/snakemake.out; end it with stop_snakemake."""
    cmd = ["timeout", "-k", "10", str(timeout), sys.executable, "-m", "snakemake", "--profile", str(profile),
           *map(str, args)]
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    if background:
        with open(Path(workdir, "snakemake.out"), "w") as out:
            return subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    return subprocess.run(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          timeout=timeout + 30)


def stop_snakemake(proc, timeout=60):
    """Wait for a background Snakemake; if it is still running after `timeout` s, SIGTERM (which `timeout`
    passes on; SIGKILL 10 s later). Returns its exit status."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        return proc.wait(30)


def wait_for_path(path, timeout=60, poll=0.2):
    """Wait until a file (e.g. one a job writes when it has started) exists; AssertionError after timeout."""
    end = time.monotonic() + timeout
    while not Path(path).exists():
        assert time.monotonic() < end, f"{path} did not appear within {timeout}s"
        time.sleep(poll)


def _logs_by_folder(workdir, prefix):
    """{folder without prefix: {jobid: log path}} under .snakemake/slurm_logs/<prefix>*/."""
    logs = {}
    root = Path(workdir, ".snakemake", "slurm_logs")
    for log in sorted(root.glob(f"{prefix}*/**/*.log")):
        logs.setdefault(log.relative_to(root).parts[0].removeprefix(prefix), {})[log.stem] = log
    return logs


def slurm_logs(workdir):
    """{rule: {jobid: log path}} of the jobs the SLURM executor submitted from `workdir` (all of them are kept
    with slurm-keep-successful-logs, which the test profile sets)."""
    return _logs_by_folder(workdir, "rule_")


def slurm_group_logs(workdir):
    """{folder: {jobid: log path}} of the group jobs (`--groups`) the SLURM executor submitted from `workdir`, with
    folder "<group>_<its rules>" (.snakemake/slurm_logs/group_<group>_<rules, joined by _, cut with ...>/<jobid>.log).
    The rules a group job ran are in its log: see rules_in_group_log."""
    return _logs_by_folder(workdir, "group_")


def rules_in_group_log(log):
    """The rule of every job a group job ran, in order, from its SLURM log (the slurm-jobstep executor starts each
    one as `localrule <rule>:` in a Snakemake of its own)."""
    return re.findall(r"^localrule (\w+):$", Path(log).read_text(), flags=re.M)


def job_gres(jobid):
    """The generic resources SLURM allocated to a job (`scontrol -d show job`: JOB_GRES, e.g. "gpu:1"); "" when
    none or once the controller has forgotten the job."""
    r = _sh(["scontrol", "-d", "show", "job", str(jobid)], timeout=10, check=False)
    m = re.search(r"\bJOB_GRES=(\S+)", r.stdout) if r.returncode == 0 else None
    return "" if m is None or m.group(1) == "(null)" else m.group(1)
