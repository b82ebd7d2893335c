"""The workflow itself: lint, dry runs of every target, configuration errors that name the key."""
import textwrap

import pytest

from workflow_utils import REPO, demo_config, snakemake, tiny_config, write_config

TARGETS = [
    "all",
    "results/lx-hx/scores.tsv",
    "results/lx-hx/curves.png",
    "results/compute.md",
    "data/lx-hx/vocab.lx-hx-ext.json",
    "data/hx/bin-hmr/train.hx.json",
    "data/lx-hx/bin-xlm/valid.lx.json",
    "models/hx/mlm/model.pt",
    "models/lx-hx/relm/seed0/mlm/model.pt",
    "models/lx-hx/relm_adapters/seed0/mlm/model.pt",
    "models/lx-hx/xlm/seed0/mlm/model.pt",
    "models/lx-hx/relm_adapters/seed0/unmt/model.pt",
    "results/lx-hx/relm/seed0/test.hx-lx.json",
    "results/lx-hx/xlm/seed0/test.lx-hx.hyp",
]


def test_lint_is_clean(tmp_path):
    proc = snakemake(tmp_path, "--lint")
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


@pytest.mark.parametrize("target", TARGETS)
def test_dry_run(tmp_path, target):
    proc = snakemake(tmp_path, "-n", "--cores", "2", target)
    out = proc.stdout + proc.stderr
    assert "This was a dry-run" in out
    first_rule = {"all": "synth", "results/lx-hx/scores.tsv": "synth"}.get(target)
    if first_rule:
        assert f"rule {first_rule}:" in out


def test_default_run_is_the_demo(tmp_path):
    """`snakemake` with no argument plans the whole demo, down to the tables."""
    out = snakemake(tmp_path, "-n", "--cores", "2").stdout
    for rule in ("synth", "tokenize", "pretrain", "mlm", "unmt", "tables"):
        assert f"rule {rule}:" in out
    assert "checkpoint extend_vocab:" in out  # N is read from its output, then the DAG grows


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["model"].update(dimm=3), "'dimm' was unexpected"),
        (lambda c: c.update(pairs=["lx-en"]), "must end with the HMR language"),
        (lambda c: c["data"]["lx-hx"].pop("test.hx"), "data.lx-hx.test.hx"),
        (lambda c: c["data"]["hx"].update({"train.hx": {"path": "/nonexistent/x.txt"}}), "data.hx.train.hx.path"),
        (lambda c: c["data"]["hx"].update({"train.hx": {"synthetic": "nope"}}), "data.hx.train.hx.synthetic"),
        (lambda c: c["unmt"]["run"].update(max_stepz=1), "max_stepz"),
        (lambda c: c["data"]["hx"].update({"train.hx": {"url": "http://x/y", "sha256": "abc"}}), "sha256"),
        (lambda c: c["unmt"].update(lambda_ae="0:1,abc"), "config key 'unmt.lambda_ae'"),
        (lambda c: c["mlm"]["optim"].update(lr=0), "config key 'mlm.optim.lr' must be > 0"),
        (lambda c: c["model"].update(n_heads=3), "config key 'model.dim' (128) must be a multiple of n_heads (3)"),
        (lambda c: c.update(pairs=["lx-hx", "lx-hx"]), "config key 'pairs'"),
        (lambda c: c.update(pairs=["hx-hx"]), "HMR language on both sides"),
        (lambda c: c["synthetic"]["demo"].update(n_lmrr=5), "config key 'synthetic.demo.n_lmrr' is unknown"),
        (lambda c: c["synthetic"]["demo"].update(lmr="zz; touch X #"), "config key 'synthetic.demo.lmr'"),
    ],
)
def test_bad_config_names_the_key(tmp_path, mutate, message):
    """Rejected by the dry run, in one line naming the key (no schema dump, no traceback)."""
    cfg = demo_config()
    mutate(cfg)
    proc = snakemake(tmp_path, "-n", "--cores", "1", config=write_config(tmp_path / "c.yaml", cfg), check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert message in out
    assert len(out.strip().splitlines()) <= 6, out
    assert not (tmp_path / "X").exists()


def test_config_override_on_the_command_line_keeps_the_demo_config(tmp_path):
    """`--config key=value` overrides the default config instead of replacing it."""
    out = snakemake(tmp_path, "-n", "--cores", "2", "--config", "seed=1").stdout
    assert "rule pretrain:" in out


def test_paper_configs_plan(tmp_path):
    """The paper configs pass the config check and plan every job: their corpora are downloads."""
    for path in sorted((REPO / "config").glob("paper*.yaml")):
        proc = snakemake(tmp_path, "-n", "--cores", "1", config=path)
        assert "This was a dry-run" in proc.stdout + proc.stderr


def test_tiny_config_is_valid(tmp_path):
    snakemake(tmp_path, "-n", "--cores", "1", config=write_config(tmp_path / "c.yaml", tiny_config()))


def documented_commands() -> list[str]:
    """Every `snakemake ...` command line shown in the README and in the headers of configs and profiles."""
    out = []
    for path in [REPO / "README.md", *sorted((REPO / "config").glob("*.yaml")), REPO / "slurm" / "config.yaml",
                 REPO / "profiles" / "local" / "config.yaml"]:
        for line in path.read_text().splitlines():
            text = line.lstrip("# ").split("  #")[0].strip()
            if text.startswith("snakemake ") and (line.startswith("    ") or line.startswith("#")):
                out.append(text)
    return sorted(set(out))


@pytest.mark.parametrize("command", documented_commands())
def test_documented_command_lines_plan(tmp_path, command):
    """Each documented command, typed in the repository root, plans its jobs (dry run). The paper config needs the
    user's corpora: there the only acceptable failure is the config check naming the missing file."""
    import shlex
    import subprocess
    import sys

    args = shlex.split(command)[1:]
    if "~/my-cluster" in args:  # the README's example of a site profile, as a user would write it
        readme = (REPO / "README.md").read_text().split("with, e.g., `~/my-cluster/config.yaml`:\n\n")[1]
        block = readme.split("\n\n")[0]
        (tmp_path / "my-cluster").mkdir()
        (tmp_path / "my-cluster" / "config.yaml").write_text(textwrap.dedent(block) + "\n")
        args = [str(tmp_path / "my-cluster") if a == "~/my-cluster" else a for a in args]
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args, "-n", "-p", "-d", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "This was a dry-run" in out, out[-3000:]
    if "paper.yaml" in command:  # the planned jobs carry what the paper's setting needs
        jobs = planned_jobs(proc.stdout)
        for rule in ("pretrain", "mlm", "unmt", "translate"):
            assert jobs[rule] and all(job["resources"].get("gpu") == "1" for job in jobs[rule]), rule
        assert all("--device auto" in job["shell"] for job in jobs["translate"])
        assert jobs["fetch"] and jobs["fetch_train"] and jobs["clean"]


def planned_jobs(out: str) -> dict:
    """{rule: [{"resources": {...}, "shell": str}]} from a dry run's output (with -p)."""
    jobs = {}
    for block in out.split("\n\n"):
        head = next((ln for ln in block.splitlines() if ln and not ln.startswith(("[", " "))), "")
        kind, _, name = head.partition(" ")
        if kind not in ("rule", "localrule", "checkpoint", "localcheckpoint") or not name.endswith(":"):
            continue
        res = next((ln.split(":", 1)[1].strip() for ln in block.splitlines() if ln.strip().startswith("resources:")), "")
        jobs.setdefault(name[:-1], []).append({
            "shell": block,
            "resources": dict(kv.split("=", 1) for kv in res.split(", ")) if res else {}})
    return jobs


def test_downloads_are_local_rules(tmp_path):
    """Downloads run in the Snakemake process (on a cluster: the submit host), never as cluster jobs: a dry run does
    not show it, the workflow object does."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings(quiet=True)) as api:
        wf = api.workflow(snakefile=REPO / "Snakefile", resource_settings=ResourceSettings(), workdir=tmp_path,
                          config_settings=ConfigSettings(configfiles=[REPO / "config" / "paper.yaml"]))
        local = set(wf._workflow._localrules)
    assert local == {"fetch", "fetch_train"}


def test_seeds_are_a_workflow_dimension(tmp_path):
    """`seeds: [0, 2]`: every system's MLM stage, UNMT, translations and scores once per seed, with that seed in the
    run's settings; data, BPE and HMR pretraining once; the tables read every seed's scores."""
    import shlex
    import subprocess
    import sys

    from workflow_utils import write_config

    cfg = write_config(tmp_path / "c.yaml", {**demo_config(), "seeds": [0, 2]})
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", str(cfg),
                           "-n", "-p", "-d", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert len(jobs["pretrain"]) == len(jobs["synth"]) == len(jobs["bpe_learn_joint"]) == 1
    for rule, per_seed in (("mlm", 3), ("unmt", 3), ("translate", 6), ("score", 6)):
        assert len(jobs[rule]) == 2 * per_seed, rule
        for seed in (0, 2):
            mine = [j["shell"] for j in jobs[rule] if f"/seed{seed}/" in j["shell"]]
            assert len(mine) == per_seed, (rule, seed)
            if rule in ("mlm", "unmt"):
                assert all(f'"seed": {seed},' in s for s in mine)
            if rule == "score":
                assert all(f"--seed {seed} " in s for s in mine)
    (curves,) = jobs["curves"]  # every run of every seed, each --metrics LABEL=FILE one command-line word
    (command,) = [ln.split(":", 1)[1] for ln in curves["shell"].splitlines() if "relm plots --metrics" in ln]
    words = shlex.split(command)
    labels = [words[i + 1].split("=")[0] for i, w in enumerate(words) if w == "--metrics"]
    assert {"xlm/unmt_seed0", "xlm/unmt_seed2", "relm_adapters/mlm_seed2", "pretrain"} <= set(labels)
    assert len(labels) == 1 + 3 * 2 * 2
    (tables,) = jobs["tables"]
    (command,) = [ln for ln in tables["shell"].splitlines() if "relm tables --scores" in ln]
    assert command.count("/seed0/test.") == command.count("/seed2/test.") == 6


def test_the_random_start_control_has_no_mlm_stage(tmp_path):
    """System `scratch`: its UNMT starts from random weights (no --init, no MLM job), and its curves have no MLM run;
    XLM beside it keeps its MLM stage; without an RE-LM system nothing pretrains on the HMR."""
    import subprocess
    import sys

    from workflow_utils import write_config

    cfg = write_config(tmp_path / "c.yaml", {**demo_config(), "systems": ["xlm", "scratch"]})
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", str(cfg),
                           "-n", "-p", "-d", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert ["/xlm/" in j["shell"] for j in jobs["mlm"]] == [True]
    (scratch,) = [j["shell"] for j in jobs["unmt"] if "/scratch/" in j["shell"]]
    (xlm,) = [j["shell"] for j in jobs["unmt"] if "/xlm/" in j["shell"]]
    assert "--init" not in scratch and "--init models/lx-hx/xlm/seed0/mlm/model.pt" in xlm
    assert scratch.split("--vocab ")[1].split()[0] == xlm.split("--vocab ")[1].split()[0]  # XLM's joint vocabulary
    (curves,) = jobs["curves"]
    assert "scratch/unmt=" in curves["shell"] and "scratch/mlm=" not in curves["shell"]
    assert len(jobs["translate"]) == len(jobs["score"]) == 4
    assert "pretrain" not in jobs and "bpe_learn_hmr" not in jobs  # no system starts from the HMR MLM


@pytest.mark.parametrize("init", ["random", "mean", "subword", "aligned"])
def test_extension_init_in_the_workflow(tmp_path, init):
    """`extension.init`: random rows are drawn by the MLM stage (no rule); the others come from one extension_init
    job per pair, which reads what its method needs, and reach both RE-LM systems' MLM stages (not XLM's)."""
    import subprocess
    import sys

    from workflow_utils import write_config

    cfg = write_config(tmp_path / "c.yaml", {**demo_config(), "extension": {"init": init}})
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", str(cfg),
                           "-n", "-p", "-d", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    for job in jobs["mlm"]:
        relm = "/xlm/" not in job["shell"]
        assert ("--ext-rows" in job["shell"]) == (relm and init != "random")
        assert (f'"extension_init": "{init}"' in job["shell"]) == relm
        assert (f"--ext-rows models/lx-hx/extension/{init}.npy " in job["shell"]) == (relm and init != "random")
    if init == "random":
        assert "extension_init" not in jobs
        return
    (job,) = jobs["extension_init"]
    inputs = next(ln for ln in job["shell"].splitlines() if ln.strip().startswith("input:"))
    assert f"output: models/lx-hx/extension/{init}.npy, models/lx-hx/extension/{init}.json" in job["shell"]
    assert "models/hx/mlm/model.pt" in inputs
    assert ("data/hx/codes.hx" in inputs) == (init == "subword")
    assert ("data/hx/bpe-hmr/train.hx" in inputs and "data/lx-hx/bpe-joint/train.lx" in inputs) == (init == "aligned")
