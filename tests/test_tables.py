"""Results tables (TSV, Markdown, LaTeX), the compute table and the plots, on hand-written inputs."""
import json
import random

import matplotlib.image
import pandas as pd
import pytest

from relm.evaluate.plots import plot_bleu_bars, plot_curves, run_colors
from relm.evaluate.score import score_file
from relm.evaluate.tables import TSV_COLUMNS, collect, write_compute_table, write_tables

SIG = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
TSIG = "nrefs:1|case:mixed|eff:no|tok:none|smooth:none|version:2.6.0|pretok:relm-moses-en"
CSIG = "nrefs:1|case:mixed|eff:yes|nc:6|nw:2|space:no|version:2.6.0"

# (pair, system, direction, split) -> (bleu, tok_bleu). relm_adapters was not run; sq-en has en->sq only.
SCORES = {
    ("mk-en", "xlm", "en-mk", "test"): (10.0, 11.0),
    ("mk-en", "xlm", "mk-en", "test"): (12.0, 13.5),
    ("mk-en", "relm", "en-mk", "test"): (15.04, 16.0),
    ("mk-en", "relm", "mk-en", "test"): (11.96, 14.25),  # rounds to 12.0: tie with XLM, both bold
    ("mk-en", "relm", "mk-en", "valid"): (99.0, 99.0),  # not in the main table
    ("sq-en", "xlm", "en-sq", "test"): (20.0, 19.0),
    ("sq-en", "relm", "en-sq", "test"): (25.0, 18.0),
}


def hand_written(tmp_path, scores=SCORES):
    paths = []
    for i, ((pair, system, direction, split), (bleu, tok)) in enumerate(scores.items()):
        src, tgt = direction.split("-")
        d = {"pair": pair, "system": system, "direction": direction, "split": split, "src_lang": src, "tgt_lang": tgt,
             "n_lines": 3000, "hyp": f"hyp.{i}", "ref": f"ref.{direction}",
             "metrics": {"bleu": {"score": bleu, "signature": SIG}, "chrf++": {"score": 40.0, "signature": CSIG},
                         "tok_bleu": {"score": tok, "signature": TSIG}},
             "copy_bleu": 1.5 if system == "xlm" else None}
        p = tmp_path / f"{i}.json"
        p.write_text(json.dumps(d))
        paths.append(p)
    return paths


def section(md: str, title_start: str) -> list[str]:
    """Lines of the Markdown table whose heading starts with title_start."""
    block = md.split("## " + title_start, 1)[1].split("\n## ", 1)[0]
    return [l for l in block.splitlines() if l.startswith("|")]


def test_markdown_layout(tmp_path):
    write_tables(hand_written(tmp_path), tmp_path / "out", bootstrap=False)
    md = (tmp_path / "out" / "bleu.md").read_text()
    t = section(md, "Detokenized BLEU")
    assert t[0] == "| System | en→mk | mk→en | en→sq | sq→en |"
    assert t[2] == "| XLM | 10.0 | **12.0** | 20.0 | – |"
    assert t[3] == "| RE-LM | **15.0** | **12.0** | **25.0** | – |"
    assert t[4] == "| RE-LM + adapters | – | – | – | – |"
    assert len(t) == 5 and "99.0" not in md and "†" not in "".join(t)
    tok = section(md, "Tokenized BLEU")
    assert tok[2] == "| XLM | 11.0 | 13.5 | **19.0** | – |"
    assert tok[3] == "| RE-LM | **16.0** | **14.2** | 18.0 | – |"
    assert f"Signature: `{SIG}`" in md and f"Signature: `{TSIG}`" in md
    assert md.index("Detokenized BLEU") < md.index("Tokenized BLEU")
    assert "Copy baseline" in md and "en→mk 1.5" in md and "sq→en –" in md


def test_pair_order_argument(tmp_path):
    write_tables(hand_written(tmp_path), tmp_path, bootstrap=False, pairs=["sq-en", "mk-en"])
    t = section((tmp_path / "bleu.md").read_text(), "Detokenized")
    assert t[0] == "| System | en→sq | sq→en | en→mk | mk→en |"
    assert t[3] == "| RE-LM | **25.0** | – | **15.0** | **12.0** |"


def test_unknown_system_gets_own_row(tmp_path):
    scores = {**SCORES, ("mk-en", "mine", "en-mk", "test"): (30.0, 30.0)}
    write_tables(hand_written(tmp_path, scores), tmp_path, bootstrap=False)
    t = section((tmp_path / "bleu.md").read_text(), "Detokenized")
    assert t[5] == "| mine | **30.0** | – | – | – |" and t[3].startswith("| RE-LM | 15.0 |")
    assert "Random start" not in (tmp_path / "bleu.md").read_text()  # a control has a row only with results


def test_a_control_with_results_gets_its_row(tmp_path):
    scores = {**SCORES, ("mk-en", "scratch", "en-mk", "test"): (3.0, 3.5)}
    write_tables(hand_written(tmp_path, scores), tmp_path, bootstrap=False)
    t = section((tmp_path / "bleu.md").read_text(), "Detokenized")
    assert t[5] == "| Random start (control) | 3.0 | – | – | – |"


def test_latex_layout(tmp_path):
    write_tables(hand_written(tmp_path), tmp_path, bootstrap=False)
    tex = (tmp_path / "bleu.tex").read_text()
    assert tex.count(r"\begin{table}") == 3 and tex.count(r"\end{tabular}") == 3
    first = tex.split(r"\end{table}")[0]
    assert r"\multicolumn{2}{c}{mk-en} & \multicolumn{2}{c}{sq-en}" in first
    assert r"System & en$\rightarrow$mk & mk$\rightarrow$en & en$\rightarrow$sq & sq$\rightarrow$en \\" in first
    assert r"XLM & 10.0 & \textbf{12.0} & 20.0 & -- \\" in first
    assert r"RE-LM + adapters & -- & -- & -- & -- \\" in first
    assert r"\texttt{nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0}" in first
    tables = tex.split(r"\end{table}")
    assert "Detokenized BLEU" in first and "chrF++" in tables[1] and "Tokenized BLEU" in tables[2]
    assert "nw:2" in tables[1]


def test_tsv(tmp_path):
    df = write_tables(hand_written(tmp_path), tmp_path, bootstrap=False)
    tsv = pd.read_csv(tmp_path / "scores.tsv", sep="\t")
    assert list(tsv.columns) == TSV_COLUMNS
    # 7 runs x 3 metrics + copy BLEU once per (pair, direction, split) that has it
    assert len(tsv) == 7 * 3 + 3 == len(df)
    row = tsv[(tsv.system == "relm") & (tsv.direction == "en-mk") & (tsv.metric == "tok_bleu")].iloc[0]
    assert (row.pair, row.split, row.score, row.signature) == ("mk-en", "test", 16.0, TSIG)
    assert tsv.p_value_vs_baseline.isna().all()
    assert set(tsv[tsv.system == "copy"].score) == {1.5}


def test_duplicate_scores_rejected(tmp_path):
    paths = hand_written(tmp_path)
    with pytest.raises(ValueError, match="duplicate"):
        collect(paths + paths[:1])


def _write(path, lines):
    path.write_text("".join(l + "\n" for l in lines))
    return path


def test_significance_marks(tmp_path):
    rnd = random.Random(1)
    words = "the a cat dog sat ran on under mat house red blue big small old new".split()
    refs = [" ".join(rnd.choice(words) for _ in range(12)) + "." for _ in range(120)]
    base = [" ".join(rnd.choice(words) for _ in range(12)) + "." for _ in range(120)]
    good = [r if i % 3 else " ".join(r.split()[:5]) for i, r in enumerate(refs)]
    ref = _write(tmp_path / "test.en", refs)
    jsons = []
    for system, hyps in (("xlm", base), ("relm", good), ("relm_adapters", base)):
        hyp = _write(tmp_path / f"{system}.en", hyps)
        meta = {"pair": "mk-en", "system": system, "direction": "mk-en", "split": "test"}
        jsons.append(score_file(hyp, ref, "en", meta=meta, out=tmp_path / f"{system}.json") and tmp_path / f"{system}.json")
    df = write_tables(jsons, tmp_path / "t", n_samples=200)
    p = df.set_index(["system", "metric"]).p_value_vs_baseline
    assert p["relm", "bleu"] < 0.05 and p["relm", "chrf++"] < 0.05 and p["relm", "tok_bleu"] < 0.05
    assert p["relm_adapters", "bleu"] == 1.0 and pd.isna(p["xlm", "bleu"])
    t = section((tmp_path / "t" / "bleu.md").read_text(), "Detokenized")
    assert "†" in t[3] and t[3].startswith("| RE-LM | – | **") and "†" not in t[2] + t[4]
    assert "p < 0.05" in (tmp_path / "t" / "bleu.md").read_text()
    tsv = pd.read_csv(tmp_path / "t" / "scores.tsv", sep="\t")
    assert tsv[tsv.system == "relm"].p_value_vs_baseline.max() < 0.05
    assert r"$^\dagger$" in (tmp_path / "t" / "bleu.tex").read_text()


def test_seeds_mean_sd_per_seed_and_pooled_significance(tmp_path):
    """Three seeds: mean ± sd cells, per-seed rows and p-values in the TSV, a pooled test on the "all" rows."""
    rnd = random.Random(3)
    words = "the a cat dog sat ran on under mat house red blue big small old new".split()
    refs = [" ".join(rnd.choice(words) for _ in range(10)) + "." for _ in range(40)]
    ref = _write(tmp_path / "test.en", refs)
    jsons = []
    for seed, keep in ((0, 7), (1, 8), (2, 6)):
        for system, n_good in (("xlm", 2), ("relm", keep)):  # of every 10 lines, n_good are the reference
            hyps = [r if i % 10 < n_good else " ".join(r.split()[:3]) for i, r in enumerate(refs)]
            hyp = _write(tmp_path / f"{system}.{seed}.en", hyps)
            meta = {"pair": "mk-en", "system": system, "direction": "mk-en", "split": "test", "seed": seed}
            jsons.append(tmp_path / f"{system}.{seed}.json")
            score_file(hyp, ref, "en", src=ref, meta=meta, out=jsons[-1])
    df = write_tables(jsons, tmp_path / "t", n_samples=200)
    tsv = pd.read_csv(tmp_path / "t" / "scores.tsv", sep="\t", dtype={"seed": str})
    assert list(tsv.columns) == TSV_COLUMNS
    bleu = tsv[(tsv.metric == "bleu") & (tsv.system == "relm")].set_index("seed")
    assert sorted(bleu.index) == ["0", "1", "2", "all"]
    per_seed = [bleu.score[s] for s in "012"]
    assert bleu.score["all"] == pytest.approx(sum(per_seed) / 3, abs=1e-3)
    assert bleu.sd["all"] == pytest.approx(pd.Series(per_seed).std(), abs=1e-3) and bleu.sd[["0", "1", "2"]].isna().all()
    assert bleu.p_value_vs_baseline.notna().all()
    assert bleu.p_value_vs_baseline["all"] < 0.05
    assert len(tsv[tsv.system == "copy"]) == 1  # the copy baseline does not depend on the seed
    md = (tmp_path / "t" / "bleu.md").read_text()
    t = section(md, "Detokenized")
    mean, sd = bleu.score["all"], bleu.sd["all"]
    assert t[3].startswith(f"| RE-LM | – | **{mean:.1f} ± {sd:.1f}†**")
    assert "mean ± sample sd over 3 training seeds" in md and "seeds 0, 1, 2 pooled" in md
    per = [l for l in t if l.startswith("| seed ")]  # the per-seed table below the main one
    assert [l.split(":")[0] for l in per] == ["| seed 0"] * 2 + ["| seed 1"] * 2 + ["| seed 2"] * 2  # systems run
    assert f"{per_seed[1]:.1f}" in next(l for l in per if l.startswith("| seed 1: RE-LM |"))
    assert r"$\pm$" in (tmp_path / "t" / "bleu.tex").read_text()
    assert len(df[(df.seed == "all") & (df.system == "xlm")]) == 3  # bleu, chrf++, tok_bleu
    plot_bleu_bars(tmp_path / "t" / "scores.tsv", tmp_path / "bars.png")  # mean, sd bars, one dot per seed
    assert matplotlib.image.imread(tmp_path / "bars.png").shape[0] > 100


HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def test_compute_table(tmp_path):
    a = tmp_path / "a.tsv"
    a.write_text(HEADER + "3725.4\t1:02:05\t2048.6\t3000\t1900\t1950\t1.0\t2.0\t95.5\t3600.2\n")
    b = tmp_path / "b.tsv"  # two repeats: mean time, max memory
    b.write_text(HEADER + "10\t0:00:10\t100\t1\t1\t1\t1\t1\t1\t5\n" + "20\t0:00:20\t300\t1\t1\t1\t1\t1\t1\t15\n")
    c = tmp_path / "c.tsv"  # a job too short for memory sampling
    c.write_text(HEADER + "0.2\t0:00:00\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n")
    out = tmp_path / "results" / "compute.md"
    df = write_compute_table({("unmt", "relm"): a, "mlm/xlm": b, "tokenize": c}, out)
    md = out.read_text().splitlines()
    assert "| unmt | RE-LM | 1:02:05 | 1:00:00 | 2049 |" in md
    assert "| mlm | XLM | 0:00:15 (mean of 2) | 0:00:10 | 300 |" in md
    assert "| tokenize | – | 0:00:00 | – | – |" in md
    assert "| **Total** | | 1:02:21 | 1:00:10 | 2049 (max) |" in md
    assert list(df.stage) == ["unmt", "mlm", "tokenize"]


def test_compute_table_core_use(tmp_path):
    """Two jobs on 2 cores: one from t=0 to 100 s (90 CPU s), one from 50 to 300 s (240 CPU s): span 300 s, 600
    core-seconds available, 330 busy, 270 idle."""
    import os

    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.write_text(HEADER + "100\t0:01:40\t10\t1\t1\t1\t1\t1\t1\t90\n")
    b.write_text(HEADER + "250\t0:04:10\t10\t1\t1\t1\t1\t1\t1\t240\n")
    t0 = 1_700_000_000
    os.utime(a, (t0 + 100, t0 + 100))
    os.utime(b, (t0 + 300, t0 + 300))
    write_compute_table({"mlm/xlm": a, "unmt/xlm": b}, tmp_path / "c.md", cores=2)
    text = (tmp_path / "c.md").read_text()
    assert "0:05:00 on 2 cores = 10.0 core-minutes; busy (the jobs' CPU time) 5.5 core-minutes (55%), idle " \
           "**4.5 core-minutes**" in text
    write_compute_table({"mlm/xlm": a}, tmp_path / "d.md")  # no --cores (a cluster run): no core-use section
    assert "Core use" not in (tmp_path / "d.md").read_text()


@pytest.mark.parametrize("label,stage,system", [
    ("mlm_mk-en_relm_adapters", "mlm mk-en", "RE-LM + adapters"),
    ("translate mk-en relm en-mk", "translate mk-en en-mk", "RE-LM"),
    ("unmt_sq-en_xlm", "unmt sq-en", "XLM"),
    ("tokenize_en_train", "tokenize en train", "–"),
    ("unmt_mk-en_relm_adapters_seed2", "unmt mk-en seed2", "RE-LM + adapters"),  # a seed label (config seeds)
])
def test_compute_table_labels(tmp_path, label, stage, system):
    a = tmp_path / "a.tsv"
    a.write_text(HEADER + "61\t0:01:01\t10\t1\t1\t1\t1\t1\t1\t30\n")
    write_compute_table({label: a}, tmp_path / "c.md")
    assert f"| {stage} | {system} | 0:01:01 | 0:00:30 | 10 |" in (tmp_path / "c.md").read_text()


def test_compute_table_from_snakemake_writer(tmp_path):
    bench = pytest.importorskip("snakemake.benchmark")
    rec = bench.BenchmarkRecord(running_time=65.3, max_rss=512.25, cpu_time=60.0)
    rec.data_collected = True
    path = tmp_path / "bench.tsv"
    bench.write_benchmark_records([rec], str(path), extended_fmt=False)
    write_compute_table({"bpe/relm": path}, tmp_path / "compute.md")
    assert "| bpe | RE-LM | 0:01:05 | 0:01:00 | 512 |" in (tmp_path / "compute.md").read_text()


def _metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 9, "st')  # torn last line
    return path


def _nontrivial_png(path):
    assert path.stat().st_size > 10_000
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 400 and img[..., :3].std() > 0.05


def test_plot_curves(tmp_path):
    mlm = _metrics(tmp_path / "mlm.jsonl", [
        {"epoch": e, "step": 100 * e, "time_s": e, "valid_mk_mlm_ppl": 500 / (e + 1), "valid_en_mlm_ppl": 300 / (e + 1),
         "valid_mlm_ppl": 400 / (e + 1), "train_mlm_mk_loss": 5 - e / 2} for e in range(5)]
        + [{"epoch": 5, "step": 550, "train_loss": 3.0}])
    unmt = _metrics(tmp_path / "unmt.jsonl", [
        {"epoch": e, "step": 50 * e, "time_s": e, "cpu_s": 30.0 * e, "valid_en-mk_mt_bleu": e * 1.5,
         "valid_mk-en_mt_bleu": e * 2.0, "valid_mk-en_mt_ppl": 30.0, "train_ae_en_loss": 4.0 - e,
         "train_bt_en-mk-en_loss": 5.0 - e} for e in range(4)])
    out = tmp_path / "plots" / "curves.mk-en.png"
    got = plot_curves({"relm/mlm": mlm, "relm/unmt": unmt}, out, title="mk-en")
    assert sorted(got["mlm_ppl"]) == ["relm/mlm en", "relm/mlm mk"]
    assert sorted(got["mt_bleu"]) == sorted(got["mt_bleu_cpu"]) == ["relm/unmt en→mk", "relm/unmt mk→en"]
    assert sorted(got["train_loss"]) == ["relm/mlm mlm_mk", "relm/unmt ae_en", "relm/unmt bt_en-mk-en"]
    _nontrivial_png(out)


def test_curve_colours_one_hue_per_run_a_shade_per_seed():
    from matplotlib.colors import to_rgb

    labels = ["pretrain", "xlm/unmt_seed0", "xlm/unmt_seed1", "xlm/unmt_seed2", "relm/unmt_seed0", "relm/unmt_seed1"]
    colors = run_colors(labels)
    assert colors["pretrain"] == to_rgb("C0")
    assert colors["xlm/unmt_seed0"] == to_rgb("C1") and colors["relm/unmt_seed0"] == to_rgb("C2")
    shades = [colors[f"xlm/unmt_seed{s}"] for s in range(3)]
    assert sum(shades[0]) < sum(shades[1]) < sum(shades[2]) <= 3  # lighter per seed
    assert colors["relm/unmt_seed1"] != colors["xlm/unmt_seed1"]
    assert run_colors(["relm/mlm", "relm/unmt"]) == {"relm/mlm": to_rgb("C0"), "relm/unmt": to_rgb("C1")}


def test_plot_curves_missing_metrics(tmp_path):
    mlm = _metrics(tmp_path / "mlm.jsonl", [{"epoch": 0, "step": 10, "valid_mk_mlm_ppl": float("nan")},
                                           {"epoch": 1, "step": 20, "valid_mk_mlm_ppl": 50.0}])
    out = tmp_path / "c.png"
    got = plot_curves({"xlm/mlm": mlm, "xlm/unmt": tmp_path / "not-yet.jsonl"}, out)
    assert got == {"mlm_ppl": ["xlm/mlm mk"], "train_loss": [], "mt_bleu": [], "mt_bleu_cpu": []}
    _nontrivial_png(out)


def test_plot_bleu_bars(tmp_path):
    write_tables(hand_written(tmp_path), tmp_path, bootstrap=False)
    out = tmp_path / "bars.png"
    plot_bleu_bars(tmp_path / "scores.tsv", out)
    _nontrivial_png(out)
