"""The whole workflow, end to end on the CPU, on tiny settings: tables, plots, compute table, HTML report, resolved
run configs, per-pair targets that leave other pairs alone."""
import csv
import json

import pytest
import yaml

from workflow_utils import snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow

RESULTS = ["results/scores.tsv", "results/bleu.md", "results/bleu.tex", "results/bleu.png", "results/compute.md",
           "results/lx-hx/scores.tsv", "results/lx-hx/curves.png"]
SYSTEMS = ["xlm", "relm", "relm_adapters"]


def test_all_results_exist(tiny_run):
    wd, _ = tiny_run
    for path in RESULTS:
        assert (wd / path).stat().st_size > 0, path


def test_tables_agree_with_score_files(tiny_run):
    wd, _ = tiny_run
    rows = list(csv.DictReader((wd / "results/scores.tsv").open(), delimiter="\t"))
    md = (wd / "results/bleu.md").read_text()
    for system in SYSTEMS:
        for direction in ("hx-lx", "lx-hx"):
            score = json.loads((wd / f"results/lx-hx/{system}/seed0/test.{direction}.json").read_text())
            bleu = score["metrics"]["bleu"]
            row = [r for r in rows if (r["system"], r["direction"], r["metric"]) == (system, direction, "bleu")]
            assert len(row) == 1 and abs(float(row[0]["score"]) - bleu["score"]) < 1e-3
            assert row[0]["signature"] == bleu["signature"]
            assert f"{bleu['score']:.1f}" in md
    assert "RE-LM + adapters" in md and "hx→lx" in md and "Signature" in md
    assert "\\begin{tabular}" in (wd / "results/bleu.tex").read_text()


def test_every_system_translated_every_line(tiny_run):
    wd, _ = tiny_run
    n_ref = len((wd / "data/lx-hx/raw/test.lx").read_text().splitlines())
    for system in SYSTEMS:
        for direction in ("hx-lx", "lx-hx"):
            hyp = (wd / f"results/lx-hx/{system}/seed0/test.{direction}.hyp").read_text().splitlines()
            assert len(hyp) == n_ref


def test_runs_write_their_resolved_config(tiny_run):
    """Each run's config.yaml is complete (every dataclass field) and carries the workflow's values."""
    wd, cfg = tiny_run
    tiny = yaml.safe_load(cfg.read_text())
    for run_dir in ["models/hx/mlm"] + [f"models/lx-hx/{s}/seed0/{st}" for s in SYSTEMS for st in ("mlm", "unmt")]:
        resolved = yaml.safe_load((wd / run_dir / "config.yaml").read_text())
        assert resolved["model"]["dim"] == tiny["model"]["dim"], run_dir
        assert "warmup_updates" in resolved["optim"] and "max_nan_steps" in resolved["run"]
    adapters = yaml.safe_load((wd / "models/lx-hx/relm_adapters/seed0/mlm/config.yaml").read_text())
    assert adapters["trainable"] == "adapters" and adapters["mlm_steps"] == ["lx"]
    assert adapters["model"]["adapter_size"] == tiny["mlm_systems"]["relm_adapters"]["model"]["adapter_size"]


def test_compute_table_lists_training_stages(tiny_run):
    wd, _ = tiny_run
    text = (wd / "results/compute.md").read_text()
    for stage in ("pretrain", "unmt", "translate"):
        assert stage in text


def test_html_report(tiny_run):
    wd, cfg = tiny_run
    snakemake(wd, "--report", "results/report.html", config=cfg, timeout=300)
    html = (wd / "results/report.html").read_text(errors="replace")
    assert "bleu.md" in html and "curves.png" in html and "compute.md" in html


def _outputs(wd, pair):
    return {p: p.stat().st_mtime_ns for d in ("data", "models", "results") for p in (wd / d / pair).rglob("*")
            if p.is_file()}


def test_per_pair_target_leaves_other_pairs_alone(tmp_path):
    """Two pairs in one config: one pair's target runs that pair only; a forced re-run of it touches nothing of the
    other; the whole-study table then has both pairs' rows without other edits."""
    cfg = tiny_config(systems=["xlm"], pairs=["lx-hx", "ly-hx"])
    cfg["synthetic"]["demo2"] = dict(cfg["synthetic"]["demo"], lmr="ly", seed=7)
    cfg["data"]["ly-hx"] = {k.replace(".lx", ".ly"): {"synthetic": "demo2"} for k in cfg["data"]["lx-hx"]}
    path = write_config(tmp_path / "two.yaml", cfg)
    snakemake(tmp_path, "--cores", "2", "results/lx-hx/scores.tsv", config=path)
    assert (tmp_path / "results/lx-hx/scores.tsv").exists()
    assert not (tmp_path / "models/ly-hx").exists() and not (tmp_path / "data/ly-hx").exists()
    snakemake(tmp_path, "--cores", "2", "results/ly-hx/scores.tsv", config=path)
    before = _outputs(tmp_path, "lx-hx")
    snakemake(tmp_path, "--cores", "2", "results/ly-hx/scores.tsv", "--forcerun", "unmt", config=path)
    assert _outputs(tmp_path, "lx-hx") == before
    snakemake(tmp_path, "--cores", "2", "results/scores.tsv", config=path)
    pairs = {r["pair"] for r in csv.DictReader((tmp_path / "results/scores.tsv").open(), delimiter="\t")}
    assert pairs == {"lx-hx", "ly-hx"}


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("direction", ["hx-lx", "lx-hx"])
def test_every_system_learns_to_translate(learning_run, system, direction):
    """Unsupervised MT works on the demo pair: test BLEU clearly above the copy baseline (source as translation)."""
    wd, _ = learning_run
    score = json.loads((wd / f"results/lx-hx/{system}/seed0/test.{direction}.json").read_text())
    bleu, copy = score["metrics"]["bleu"]["score"], score["copy_bleu"]
    assert bleu >= copy + 1.0, f"{system} {direction}: BLEU {bleu:.2f} vs copy baseline {copy:.2f}"


def test_learning_curves_go_the_right_way(learning_run):
    """Validation MLM perplexity falls in every MLM stage (HMR pretraining, both RE-LM fine-tunings, the XLM
    baseline); validation BLEU gets above 1 in UNMT for every system."""
    wd, _ = learning_run

    def history(run_dir):
        return [json.loads(line) for line in (wd / run_dir / "metrics.jsonl").read_text().splitlines()]

    for run_dir, metric in [("models/hx/mlm", "valid_hx_mlm_ppl")] + [
        (f"models/lx-hx/{system}/seed0/mlm", "valid_lx_mlm_ppl") for system in SYSTEMS
    ]:
        hist = history(run_dir)
        assert len(hist) >= 2 and hist[-1][metric] < hist[0][metric], run_dir
    for system in SYSTEMS:
        hist = history(f"models/lx-hx/{system}/seed0/unmt")
        assert max(h["valid_lx-hx_mt_bleu"] for h in hist) > 1.0


def test_translate_cli_round_trip_on_trained_model(learning_run, tmp_path):
    """`relm translate` on raw text with a trained UNMT model: one output line per input line, order kept, empty
    lines kept; stdin works like a file."""
    import subprocess

    wd, _ = learning_run
    src = (wd / "data/lx-hx/raw/test.hx").read_text().splitlines()[:7]
    lines = [src[0], "", src[1], src[2], "", "", src[3], src[4] + " " + src[5], src[6]]
    inp = tmp_path / "in.hx"
    inp.write_text("\n".join(lines) + "\n")
    cmd = ["relm", "translate", "--model", str(wd / "models/lx-hx/relm/seed0/unmt/model.pt"), "--src-lang", "hx",
           "--tgt-lang", "lx", "--codes", str(wd / "data/hx/codes.hx")]
    out = subprocess.run(cmd + ["--input", str(inp), "--output", str(tmp_path / "out.lx")], check=True,
                         capture_output=True, text=True)
    hyp = (tmp_path / "out.lx").read_text().split("\n")[:-1]
    assert len(hyp) == len(lines), out.stderr
    assert all(h == "" for h, ln in zip(hyp, lines) if ln == "")  # empty line in, empty line out
    assert sum(h != "" for h, ln in zip(hyp, lines) if ln) >= 5  # a trained model translates the others
    piped = subprocess.run(cmd, input=inp.read_text(), check=True, capture_output=True, text=True).stdout
    assert piped.split("\n")[:-1] == hyp  # deterministic, and stdin/stdout behave like files
    # The same sentence alone or in a batch translates the same (order restored after length sorting).
    single = tmp_path / "one.hx"
    single.write_text(lines[3] + "\n")
    subprocess.run(cmd + ["--input", str(single), "--output", str(tmp_path / "one.lx")], check=True)
    assert (tmp_path / "one.lx").read_text().rstrip("\n") == hyp[3]
