"""Compares the starting rows of the extension's new tokens (config `extension.init`) across workflow runs that differ
only in that setting: one working directory per init, the same config otherwise.

    python -m bench.extension_init --config config/tiny-lmr.yaml --pair lx-hx \\
        random=DIR mean=DIR subword=DIR aligned=DIR [--systems relm relm_adapters] [--out OUT.md] [--png OUT.png]

Per system and init, over the seeds found: the MLM stage's LMR validation perplexity (after the first evaluation and
at the end), nearest-neighbour word translation of its embeddings on the words the pair spells differently
(bench.word_translation), the UNMT run's best validation BLEU (mean of both directions: what a choice of the default
looks at), and test BLEU per direction with a paired bootstrap against `random` on the seeds' test translations pooled
(relm.evaluate.tables). The PNG shows the mean LMR validation perplexity curve of each init's MLM stage.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pandas as pd
import yaml

from bench.word_translation import build_pair, evaluate, lexicon
from relm.evaluate.plots import read_metrics
from relm.evaluate.tables import ALL, add_significance, collect


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    sd = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.1f}{sd}"


def _score_files(run_dir: Path, pair: str, system: str) -> list[Path]:
    return sorted((run_dir / "results" / pair / system).glob("seed*/test.*.json"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--pair", required=True)
    ap.add_argument("--systems", nargs="+", default=["relm", "relm_adapters"])
    ap.add_argument("--out", help="write the Markdown here too")
    ap.add_argument("--png", help="the LMR validation perplexity curves")
    ap.add_argument("runs", nargs="+", metavar="INIT=DIR")
    a = ap.parse_args(argv)
    runs = {k: Path(v) for k, v in (r.split("=", 1) for r in a.runs)}
    config = yaml.safe_load(Path(a.config).read_text())
    synth, lmr, hmr = build_pair(config, a.pair)
    words = lexicon(synth)
    lines = []
    curves: dict[tuple[str, str], list[list[tuple[int, float]]]] = {}
    for system in a.systems:
        rows = []
        for init, d in runs.items():
            files = _score_files(d, a.pair, system)
            if not files:
                continue
            df = collect(files)
            df["hyp"] = [str(d / h) if isinstance(h, str) else h for h in df.hyp]
            df["ref"] = [str(d / r) if isinstance(r, str) else r for r in df.ref]
            df["system"] = df.system.where(df.system == "copy", init)
            rows.append(df)
        if not rows:
            continue
        df = add_significance(pd.concat(rows, ignore_index=True), baseline="random")
        lines += [f"### {system}", "", "| init | LMR ppl, first eval → end | word translation acc@1 / @5 | best valid "
                  "BLEU | test BLEU hx→lx | test BLEU lx→hx |", "|---|---:|---:|---:|---:|---:|"]
        all_seeds: set[str] = set()
        for init, d in runs.items():
            seeds = sorted(p.name[4:] for p in (d / "models" / a.pair / system).glob("seed*"))
            all_seeds.update(seeds)
            first, last, acc1, acc5, valid = [], [], [], [], []
            for s in seeds:
                s = f"seed{s}"
                mlm = read_metrics(d / "models" / a.pair / system / s / "mlm" / "metrics.jsonl")
                ppl = [(r["step"], r[f"valid_{lmr}_mlm_ppl"]) for r in mlm if f"valid_{lmr}_mlm_ppl" in r]
                if ppl:
                    curves.setdefault((system, init), []).append(ppl)
                    first.append(ppl[0][1])
                    last.append(min(p for _, p in ppl))
                model = d / "models" / a.pair / system / s / "mlm" / "model.pt"
                if model.is_file():
                    wt = evaluate(str(model), words, lmr)
                    if wt["n_test"]:
                        acc1.append(100 * wt["acc@1"])
                        acc5.append(100 * wt["acc@5"])
                unmt = read_metrics(d / "models" / a.pair / system / s / "unmt" / "metrics.jsonl")
                bleu = [(r.get(f"valid_{hmr}-{lmr}_mt_bleu", 0) + r.get(f"valid_{lmr}-{hmr}_mt_bleu", 0)) / 2
                        for r in unmt if f"valid_{lmr}-{hmr}_mt_bleu" in r]
                if bleu:
                    valid.append(max(bleu))
            cells = []
            for direction in (f"{hmr}-{lmr}", f"{lmr}-{hmr}"):
                sel = df[(df.system == init) & (df.direction == direction) & (df.metric == "bleu")]
                per = sel[sel.seed != ALL].score.tolist()
                p = sel[sel.seed == ALL].p_value_vs_baseline
                mark = "" if init == "random" or p.empty or not p.iloc[0] < 0.05 else "†"
                pv = "" if init == "random" or p.empty else f" (p {p.iloc[0]:.3f})"
                cells.append(f"{_mean_sd(per)}{mark}{pv}" if per else "–")
            lines.append(f"| {init} | {_mean_sd(first)} → {_mean_sd(last)} | {_mean_sd(acc1)} / {_mean_sd(acc5)} | "
                         f"{_mean_sd(valid)} | {cells[0]} | {cells[1]} |")
        lines += ["", f"mean ± sd over seeds {', '.join(sorted(all_seeds))}; † = significantly different from random "
                  "(p < 0.05, paired bootstrap, 1000 samples, the seeds' test translations pooled); word translation "
                  "in % (bench.word_translation).", ""]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    if a.png and curves:
        _plot(curves, a.png, lmr)


def _plot(curves, out, lmr) -> None:
    from relm.evaluate.plots import plt, run_colors

    systems = sorted({s for s, _ in curves})
    fig, axes = plt.subplots(1, len(systems), figsize=(6 * len(systems), 4.5), squeeze=False)
    colors = run_colors(sorted({i for _, i in curves}))
    for ax, system in zip(axes[0], systems):
        for (s, init), runs in sorted(curves.items()):
            if s != system:
                continue
            steps = [st for st, _ in runs[0]]
            mean = [statistics.mean(r[k][1] for r in runs if len(r) > k) for k in range(len(steps))]
            ax.plot(steps, mean, marker=".", color=colors[init], label=f"{init} ({len(runs)} seeds)")
        ax.set(title=f"{system}: MLM stage", xlabel="step", ylabel=f"validation {lmr} perplexity (log)", yscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(json.dumps({"png": str(out)}))


if __name__ == "__main__":
    main()
