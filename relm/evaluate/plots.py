"""Training curves and the results bar chart as PNG files (matplotlib, Agg backend: no display needed).

Training runs log JSON lines {"epoch", "step", "time_s", "cpu_s", train_<name>_loss, <metric>: value, ...}
(metrics.jsonl); validation metrics are named as in XLM: valid_{lang}_mlm_ppl, valid_{l1}-{l2}_mt_bleu.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from relm.evaluate.tables import ALL, COPY, directions  # noqa: E402
from relm.files import atomic_output  # noqa: E402
from relm.systems import DISPLAY  # noqa: E402

MLM_PPL = re.compile(r"^valid_(.+)_mlm_ppl$")
MT_BLEU = re.compile(r"^valid_(.+)_mt_bleu$")
TRAIN_LOSS = re.compile(r"^train_(.+)_loss$")


def read_metrics(path) -> list[dict]:
    """JSON lines of a metrics file; a missing file or a torn last line (run still writing) gives what is readable."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _series(records: list[dict], pattern: re.Pattern) -> dict[str, tuple[list, list]]:
    """{what (lang or direction): (steps, values)} for the keys matching pattern, skipping non-finite values."""
    series: dict[str, tuple[list, list]] = {}
    for i, r in enumerate(records):
        for k, v in r.items():
            m = pattern.match(k)
            if m and isinstance(v, (int, float)) and math.isfinite(v):
                xs, ys = series.setdefault(m.group(1), ([], []))
                xs.append(r.get("step", i))
                ys.append(v)
    return series


def _save(fig, out_png) -> None:
    with atomic_output(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} logged", ha="center", va="center", transform=ax.transAxes, color="gray")


def run_colors(labels: list[str]) -> dict[str, tuple]:
    """One colour per run without its seed ("relm/unmt" of "relm/unmt_seed2"), lighter shades for its later seeds:
    many seeds stay readable as one hue per system and stage."""
    from matplotlib.colors import to_rgb

    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(label.rsplit("_seed", 1)[0], []).append(label)
    out = {}
    for k, members in enumerate(groups.values()):
        base = to_rgb(f"C{k % 10}")
        for j, label in enumerate(members):
            mix = 0.55 * j / max(1, len(members) - 1)  # 0 for the first seed, 0.55 towards white for the last
            out[label] = tuple(c + (1 - c) * mix for c in base)
    return out


def plot_curves(metrics_files: dict[str, str | Path], out_png, title: str | None = None) -> dict[str, list[str]]:
    """Four panels, one line per run (label; colours: run_colors) and language or direction (line style): validation
    MLM perplexity (log scale) and the epochs' mean training losses against the run's step; validation BLEU against
    step and against the run's CPU minutes (wall minutes for metrics written before CPU time was logged). Call once
    per language pair with that pair's runs, e.g. {"relm/mlm": path, "relm/unmt": path}. Missing files and metrics
    are skipped (a panel without data says so). Returns the plotted series' names per panel."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (ax_ppl, ax_loss), (ax_bleu, ax_cpu) = axes
    runs = {label: read_metrics(p) for label, p in metrics_files.items()}
    styles = ["-", "--", ":", "-."]  # line style = language / direction / loss
    colors = run_colors(list(runs))
    for label, records in runs.items():
        color = colors[label]
        for j, (lang, (xs, ys)) in enumerate(sorted(_series(records, MLM_PPL).items())):
            ax_ppl.plot(xs, ys, styles[j % 4], color=color, marker=".", label=f"{label} {lang}")
        for j, (name, (xs, ys)) in enumerate(sorted(_series(records, TRAIN_LOSS).items())):
            ax_loss.plot(xs, ys, styles[j % 4], color=color, marker=".", label=f"{label} {name}")
        minutes = {r.get("step", i): r.get("cpu_s", r.get("time_s", 0)) / 60 for i, r in enumerate(records)}
        for j, (direction, (xs, ys)) in enumerate(sorted(_series(records, MT_BLEU).items())):
            name = f"{label} {direction.replace('-', '→')}"
            ax_bleu.plot(xs, ys, styles[j % 4], color=color, marker=".", label=name)
            ax_cpu.plot([minutes[x] for x in xs], ys, styles[j % 4], color=color, marker=".", label=name)
    ax_ppl.set(title="validation MLM perplexity", xlabel="step", ylabel="perplexity (log scale)")
    ax_loss.set(title="training loss (mean over each epoch)", xlabel="step", ylabel="cross-entropy")
    ax_bleu.set(title="validation BLEU (tokenized, as in training)", xlabel="step", ylabel="BLEU")
    ax_cpu.set(title="validation BLEU against compute", xlabel="CPU minutes of the run", ylabel="BLEU")
    if ax_ppl.lines and all(min(l.get_ydata()) > 0 for l in ax_ppl.lines):
        ax_ppl.set_yscale("log")
    for ax, what in ((ax_ppl, "MLM perplexity"), (ax_loss, "training loss"), (ax_bleu, "BLEU"), (ax_cpu, "BLEU")):
        if ax.lines:  # many seeds: more columns, smaller type, so that the legend stays inside its panel
            n = len(ax.lines)
            ax.legend(fontsize="x-small" if n <= 14 else "xx-small", ncol=1 + (n - 1) // 14)
            ax.grid(alpha=0.3)
        else:
            _no_data(ax, what)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plotted = {"mlm_ppl": [l.get_label() for l in ax_ppl.lines], "train_loss": [l.get_label() for l in ax_loss.lines],
               "mt_bleu": [l.get_label() for l in ax_bleu.lines], "mt_bleu_cpu": [l.get_label() for l in ax_cpu.lines]}
    _save(fig, out_png)
    return plotted


def plot_bleu_bars(scores_tsv, out_png, split: str = "test", pairs: list[str] | None = None) -> None:
    """Grouped bars of the main table (one group per direction, one bar per system); detokenized BLEU and, if
    present, tokenized BLEU side by side. With several seeds: the mean, the sd as an error bar and each seed's score
    as a dot."""
    df = pd.read_csv(scores_tsv, sep="\t", dtype={"seed": str})
    df = df[(df["split"] == split) & (df["system"] != COPY)]
    if "seed" not in df:  # a table written before seeds
        df = df.assign(seed="0", sd=float("nan"))
    seeds = df[df["seed"] != ALL]
    df = df[df["seed"] == ALL] if (df["seed"] == ALL).any() else df
    pairs = pairs or list(dict.fromkeys(df["pair"]))
    cols = directions(pairs)
    metrics = [m for m in ("bleu", "tok_bleu") if (df["metric"] == m).any()] or ["bleu"]
    systems = [s for s in DISPLAY if (df["system"] == s).any()] + sorted(set(df["system"]) - set(DISPLAY))
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(6, 2.2 * len(cols)) * len(metrics) / 1.5, 4.5), squeeze=False)
    width = 0.8 / max(1, len(systems))
    for ax, metric in zip(axes[0], metrics):
        sub = df[df["metric"] == metric].set_index(["system", "pair", "direction"])
        for k, system in enumerate(systems):
            xs, ys, err = [], [], []
            for j, (pair, d) in enumerate(cols):
                if (system, pair, d) in sub.index:
                    x = j + (k - (len(systems) - 1) / 2) * width
                    xs.append(x)
                    ys.append(float(sub.loc[(system, pair, d), "score"]))
                    err.append(float(sub.loc[(system, pair, d), "sd"]))
                    runs = seeds[(seeds.metric == metric) & (seeds.system == system) & (seeds.pair == pair)
                                 & (seeds.direction == d)]
                    if len(runs) > 1:
                        ax.plot([x] * len(runs), runs.score, ".", color="black", markersize=4, zorder=3)
            has_err = any(math.isfinite(e) for e in err)
            bars = ax.bar(xs, ys, width, yerr=[e if math.isfinite(e) else 0 for e in err] if has_err else None,
                          capsize=3, label=DISPLAY.get(system, system))
            ax.bar_label(bars, fmt="%.1f", fontsize="x-small")
        ax.set_xticks(range(len(cols)), [d.replace("-", "→") for _, d in cols])
        ax.set(title=f"{'tokenized BLEU' if metric == 'tok_bleu' else 'sacreBLEU'} ({split})", ylabel="BLEU")
        if sub.empty:
            _no_data(ax, "scores")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:  # one legend for all panels, below them, so it never covers a bar
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _save(fig, out_png)
