"""Results tables from score JSON files (see score.py) and Snakemake benchmark files.

`write_tables` writes scores.tsv (long format: every score, with its signature and the paired-bootstrap p-value
against the baseline system) and the paper's main table (systems x translation directions, test split) as
Markdown and LaTeX, once for detokenized sacreBLEU and once for the original's tokenized BLEU.
`write_compute_table` summarises wall time and peak memory per stage from Snakemake `benchmark:` files.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Iterable

import pandas as pd

from relm.evaluate.score import paired_bootstrap_many, read_lines, tokenize_lines
from relm.files import atomic_write_text
from relm.systems import DISPLAY, SYSTEMS

METRIC_TITLES = {
    "bleu": "Detokenized BLEU (sacreBLEU)",
    "chrf++": "chrF++ (sacreBLEU, detokenized)",
    "tok_bleu": "Tokenized BLEU (multi-bleu.perl style on Moses-tokenized text, as reported by the original code)",
}
TABLE_METRICS = ("bleu", "chrf++", "tok_bleu")
COPY = "copy"  # pseudo-system: the source sentence used as its own translation
ALL = "all"  # the seed of summary rows: mean and sd over the seeds, p-value of the seeds' translations pooled
TSV_COLUMNS = ["pair", "system", "direction", "split", "metric", "seed", "score", "sd", "signature",
               "p_value_vs_baseline"]
CELL = ["pair", "system", "direction", "split", "metric"]
ALPHA = 0.05
MISSING_MD, MISSING_TEX = "–", "--"


def collect(score_jsons: Iterable[str | Path]) -> pd.DataFrame:
    """Long table, one row per (pair, system, direction, split, metric, seed); copy-baseline BLEU as system "copy"
    (once per pair, direction and split: it does not depend on the seed)."""
    rows, seen = [], set()
    for path in score_jsons:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        seed = str(d.get("seed", 0))
        key = (d["pair"], d["system"], d["direction"], d["split"], seed)
        if key in seen:
            raise ValueError(f"duplicate scores for pair/system/direction/split/seed {key} (in {path})")
        seen.add(key)
        common = {**{k: d[k] for k in ("pair", "system", "direction", "split")}, "seed": seed}
        extra = {"tgt_lang": d.get("tgt_lang"), "n_lines": d.get("n_lines"), "hyp": d.get("hyp"), "ref": d.get("ref")}
        for metric, m in d["metrics"].items():
            rows.append({**common, "metric": metric, "score": m["score"], "signature": m["signature"], **extra})
        copy_key = (d["pair"], COPY, d["direction"], d["split"])
        if d.get("copy_bleu") is not None and copy_key not in seen:
            seen.add(copy_key)
            rows.append({**common, "system": COPY, "metric": "bleu", "score": d["copy_bleu"],
                         "signature": d["metrics"]["bleu"]["signature"], **extra, "hyp": d.get("src")})
    cols = ["pair", "system", "direction", "split", "metric", "seed", "score", "signature", "tgt_lang", "n_lines",
            "hyp", "ref"]
    df = pd.DataFrame(rows, columns=cols)
    df["sd"] = math.nan
    df["p_value_vs_baseline"] = math.nan
    return add_summary(df)


def add_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Append rows with seed "all" (mean, sample sd over the seeds) when some cell has more than one seed."""
    per = df[(df.seed != ALL) & (df.system != COPY)]
    if per.empty or per.groupby(CELL)["seed"].nunique().max() <= 1:
        return df
    rows = []
    for key, g in per.groupby(CELL, sort=False):
        rows.append({**dict(zip(CELL, key)), "seed": ALL, "score": g.score.mean(),
                     "sd": g.score.std(ddof=1) if len(g) > 1 else math.nan, "signature": g.signature.iloc[0],
                     "tgt_lang": g.tgt_lang.iloc[0], "n_lines": g.n_lines.sum(), "hyp": None, "ref": None,
                     "p_value_vs_baseline": math.nan})
    return pd.concat([df, pd.DataFrame(rows, columns=df.columns)], ignore_index=True)


def add_significance(df: pd.DataFrame, baseline: str = "xlm", n_samples: int = 1000, seed: int = 12345) -> pd.DataFrame:
    """Fill p_value_vs_baseline by paired bootstrap of every system against the baseline: per seed (same seed, same
    test set) and, on the "all" rows, over the translations of the seeds both have, concatenated."""
    df = df.copy()
    per = df[df.seed != ALL]
    base = per[per.system == baseline].set_index(["pair", "direction", "split", "metric", "seed"])
    cache: dict = {}

    def lines(path, lang=None):  # file lines, Moses-tokenized for tok_bleu; each file is read/tokenized once
        if (path, lang) not in cache:
            cache[path, lang] = read_lines(path) if lang is None else tokenize_lines(lines(path), lang)
        return cache[path, lang]

    def checked(row, b, lang):
        if lines(row.ref) != lines(b.ref):
            raise ValueError(f"{row.system} and {baseline} were scored against different references: "
                             f"{row.ref}, {b.ref}")
        ref = lines(b.ref, lang)
        for path in (b.hyp, row.hyp):
            if len(lines(path, lang)) != len(ref):
                raise ValueError(f"line count mismatch: hypothesis file {path} has {len(lines(path, lang))} lines "
                                 f"but {b.ref} has {len(ref)} lines")
        return lines(row.hyp, lang)

    todo = per[(per.system != baseline) & (per.system != COPY)]
    for key, group in todo.groupby(["pair", "direction", "split", "metric", "seed"], sort=False):
        if key not in base.index:
            continue
        b = base.loc[key]
        lang = b.tgt_lang if key[3] == "tok_bleu" else None
        systems = {i: checked(row, b, lang) for i, row in group.iterrows()}
        sigs = paired_bootstrap_many(systems, lines(b.hyp, lang), lines(b.ref, lang), n_samples=n_samples, seed=seed,
                                     metric=key[3], tgt_lang=b.tgt_lang, pretokenized=True)
        for i, sig in sigs.items():
            df.at[i, "p_value_vs_baseline"] = sig.p_value
    for i, row in df[(df.seed == ALL) & (df.system != baseline) & (df.system != COPY)].iterrows():
        runs = todo[(todo.pair == row.pair) & (todo.system == row.system) & (todo.direction == row.direction)
                    & (todo.split == row.split) & (todo.metric == row.metric)]
        hyps, base_hyps, refs = [], [], []
        for _, r in runs.sort_values("seed").iterrows():
            key = (r.pair, r.direction, r.split, r.metric, r.seed)
            if key in base.index:
                b = base.loc[key]
                lang = b.tgt_lang if r.metric == "tok_bleu" else None
                hyps += checked(r, b, lang)
                base_hyps += lines(b.hyp, lang)
                refs += lines(b.ref, lang)
        if refs:
            (sig,) = paired_bootstrap_many({"s": hyps}, base_hyps, refs, n_samples=n_samples, seed=seed,
                                           metric=row.metric, tgt_lang=row.tgt_lang, pretokenized=True).values()
            df.at[i, "p_value_vs_baseline"] = sig.p_value
    return df


def directions(pairs: Iterable[str]) -> list[tuple[str, str]]:
    """(pair, direction) columns: for each pair "{lmr}-{hmr}" first hmr->lmr, then lmr->hmr."""
    out = []
    for pair in pairs:
        lmr, hmr = pair.split("-")
        out += [(pair, f"{hmr}-{lmr}"), (pair, f"{lmr}-{hmr}")]
    return out


def _systems(df: pd.DataFrame) -> list[str]:
    """Rows: the paper's systems always (– where not run), controls and unknown systems when they have scores."""
    others = sorted(set(df.system) - set(DISPLAY) - {COPY})
    return [s for s in DISPLAY if not SYSTEMS[s].control or (df.system == s).any()] + others


def main_table(df: pd.DataFrame, metric: str, pairs: list[str], split: str = "test", baseline: str = "xlm",
               seed: str | None = None):
    """Cells of the main table: (columns, {system: [cell or None]}) with cell = [score, bold, significant, sd].
    With several seeds the cells are the "all" rows (mean ± sd, pooled test), else the one seed's; `seed` picks one."""
    cols = directions(pairs)
    sub = df[(df.metric == metric) & (df.split == split)]
    if seed is not None:
        sub = sub[sub.seed == seed]
    elif (sub.seed == ALL).any():
        sub = sub[(sub.seed == ALL) | (sub.system == COPY)]
    sub = sub.set_index(["system", "pair", "direction"])
    cells = {}
    for system in _systems(df):
        row = []
        for pair, direction in cols:
            if (system, pair, direction) in sub.index:
                r = sub.loc[(system, pair, direction)]
                p = r.p_value_vs_baseline
                row.append([float(r.score), False, system != baseline and not pd.isna(p) and p < ALPHA, float(r.sd)])
            else:
                row.append(None)
        cells[system] = row
    for j in range(len(cols)):
        present = [cells[s][j] for s in cells if cells[s][j] is not None]
        if present:
            best = max(round(c[0], 1) for c in present)
            for c in present:
                c[1] = round(c[0], 1) == best
    return cols, cells


def seeds_of(df: pd.DataFrame) -> list[str]:
    """The training seeds in the table, in numeric order."""
    return sorted(set(df[(df.seed != ALL) & (df.system != COPY)].seed), key=int)


def _cell(c, tex: bool) -> str:
    if c is None:
        return MISSING_TEX if tex else MISSING_MD
    s = f"{c[0]:.1f}"
    if not pd.isna(c[3]):
        s += (r" $\pm$ " if tex else " ± ") + f"{c[3]:.1f}"
    if tex:
        return (rf"\textbf{{{s}}}" if c[1] else s) + (r"$^\dagger$" if c[2] else "")
    s += "†" if c[2] else ""
    return f"**{s}**" if c[1] else s


def _signatures(df: pd.DataFrame, metric: str, split: str) -> list[str]:
    sub = df[(df.metric == metric) & (df.split == split) & (df.system != COPY)]
    return sorted(set(sub.signature))


def _copy_row(df: pd.DataFrame, cols, split: str) -> list[float | None]:
    sub = df[(df.system == COPY) & (df.split == split)].set_index(["pair", "direction"])
    return [float(sub.loc[c].score) if c in sub.index else None for c in cols]


def _arrow(direction: str, tex: bool) -> str:
    a, b = direction.split("-")
    return f"{a}$\\rightarrow${b}" if tex else f"{a}→{b}"


def _legend(baseline: str, n_samples: int | None, seeds: list[str] = ()) -> str:
    test = f"paired bootstrap resampling, {n_samples} samples" if n_samples else "paired bootstrap resampling"
    if len(seeds) > 1:
        test += f", the test translations of seeds {', '.join(seeds)} pooled"
    legend = f"best per column in bold; † = significantly different from {DISPLAY.get(baseline, baseline)} ({test}, p < {ALPHA})"
    return (f"mean ± sample sd over {len(seeds)} training seeds; " + legend) if len(seeds) > 1 else legend


def _md_rows(cols, cells) -> list[str]:
    return [f"| {DISPLAY.get(system, system)} | " + " | ".join(_cell(c, False) for c in row) + " |"
            for system, row in cells.items()]


def markdown_table(df, metric, pairs, split="test", baseline="xlm", n_samples=None) -> str:
    cols, cells = main_table(df, metric, pairs, split, baseline)
    seeds = seeds_of(df)
    header = ["| System | " + " | ".join(_arrow(d, False) for _, d in cols) + " |", "|---|" + "---:|" * len(cols)]
    lines = [f"## {METRIC_TITLES.get(metric, metric)}, {split} set", "", *header, *_md_rows(cols, cells)]
    lines += ["", _legend(baseline, n_samples, seeds) + "."]
    if metric == "bleu":
        copy = _copy_row(df, cols, split)
        if any(v is not None for v in copy):
            lines.append("Copy baseline (source sentence as translation), BLEU: " + ", ".join(
                f"{_arrow(d, False)} {MISSING_MD if v is None else f'{v:.1f}'}" for (_, d), v in zip(cols, copy)) + ".")
    for sig in _signatures(df, metric, split):
        lines.append(f"Signature: `{sig}`")
    if len(seeds) > 1:
        lines += ["", f"Per seed († = p < {ALPHA} against {DISPLAY.get(baseline, baseline)} on that seed's test set):",
                  "", *header]
        for seed in seeds:
            _, per = main_table(df, metric, pairs, split, baseline, seed=seed)
            ran = {system: row for system, row in per.items() if any(c is not None for c in row)}
            lines += [r.replace("| ", f"| seed {seed}: ", 1) for r in _md_rows(cols, ran)]
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(repl.get(ch, ch) for ch in s)


def latex_table(df, metric, pairs, split="test", baseline="xlm", n_samples=None) -> str:
    cols, cells = main_table(df, metric, pairs, split, baseline)
    title = METRIC_TITLES.get(metric, metric)
    lines = [f"% {title}, {split} set", r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * len(cols) + "}",
             r"\toprule"]
    lines.append(" & " + " & ".join(rf"\multicolumn{{2}}{{c}}{{{_tex_escape(p)}}}" for p in pairs) + r" \\")
    lines.append("System & " + " & ".join(_arrow(d, True) for _, d in cols) + r" \\")
    lines.append(r"\midrule")
    for system, row in cells.items():
        lines.append(_tex_escape(DISPLAY.get(system, system)) + " & " + " & ".join(_cell(c, True) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    legend = _tex_escape(_legend(baseline, n_samples, seeds_of(df)))
    legend = legend.replace("±", r"$\pm$").replace("†", r"$^\dagger$").replace(f"p < {ALPHA}", f"$p<{ALPHA}$")
    sigs = "; ".join(rf"\texttt{{{_tex_escape(s)}}}" for s in _signatures(df, metric, split))
    lines.append(rf"\caption{{{_tex_escape(title)}, {split} set; {legend}.}}")
    if sigs:
        lines.append(rf"\par\footnotesize Signature: {sigs}")
    lines += [rf"\label{{tab:{metric.replace('_', '-')}-{split}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_tsv(df: pd.DataFrame, path) -> None:
    out = df[TSV_COLUMNS].copy()
    out["score"] = out["score"].map(lambda v: f"{v:.4f}")
    out["sd"] = out["sd"].map(lambda v: "NA" if pd.isna(v) else f"{v:.4f}")
    out["p_value_vs_baseline"] = out["p_value_vs_baseline"].map(lambda v: "NA" if pd.isna(v) else f"{v:.4g}")
    atomic_write_text(path, out.to_csv(sep="\t", index=False, lineterminator="\n"))


def write_tables(score_jsons, out_dir, baseline: str = "xlm", bootstrap: bool = True, pairs: list[str] | None = None,
                 n_samples: int = 1000, seed: int = 12345, split: str = "test") -> pd.DataFrame:
    """Write out_dir/scores.tsv, bleu.md, bleu.tex. pairs: column order (default: order of first appearance)."""
    df = collect(score_jsons)
    if bootstrap:
        df = add_significance(df, baseline, n_samples, seed)
    pairs = list(pairs) if pairs else list(dict.fromkeys(df.pair))
    out_dir = Path(out_dir)
    write_tsv(df, out_dir / "scores.tsv")
    ns = n_samples if bootstrap else None
    atomic_write_text(out_dir / "bleu.md", "\n".join(
        markdown_table(df, m, pairs, split, baseline, ns) for m in TABLE_METRICS))
    atomic_write_text(out_dir / "bleu.tex", "\n".join(
        latex_table(df, m, pairs, split, baseline, ns) for m in TABLE_METRICS))
    return df


# ---- compute (Snakemake benchmark files) ----

def read_benchmark(path) -> pd.DataFrame:
    """A Snakemake benchmark file: TSV with header s, h:m:s, max_rss, ... (one row per repeat), or JSON lines."""
    path = Path(path)
    if path.suffix == ".jsonl":
        df = pd.DataFrame([json.loads(l) for l in path.read_text().splitlines() if l.strip()])
    else:
        df = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
    for col in ("s", "max_rss", "cpu_time"):
        if col not in df.columns:
            if col == "s":
                raise ValueError(f"{path} is not a Snakemake benchmark file (no 's' column)")
            df[col] = math.nan
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def hms(seconds: float) -> str:
    if seconds is None or pd.isna(seconds):
        return MISSING_MD
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


_SYSTEM_IN_LABEL = re.compile(r"(?:^|(?<=[ _/]))(" + "|".join(sorted(DISPLAY, key=len, reverse=True)) + r")(?=$|[ _/])")


def _split_label(label) -> tuple[str, str]:
    """(stage, system) from a (stage, system) tuple or a label such as "unmt mk-en relm_adapters" /
    "unmt_mk-en_relm" / "unmt/relm": the system is the known system name in it, the rest is the stage."""
    if isinstance(label, tuple):
        return str(label[0]), str(label[1]) if len(label) > 1 else ""
    label = str(label)
    m = _SYSTEM_IN_LABEL.search(label)
    if not m:
        return label.replace("_", " "), ""
    rest = (label[: m.start()] + " " + label[m.end() :]).replace("_", " ").replace("/", " ")
    return " ".join(rest.split()), m.group(1)


def core_use(benchmarks: dict, cores: int) -> dict:
    """How busy `cores` cores were over the benchmarked jobs ({path: read_benchmark(path)}): each job ran from its
    benchmark file's modification time (written when the job ended) minus its wall time until that time; span = first
    start to last end; busy = the jobs' CPU time; idle = span x cores - busy (jobs without a benchmark file count as
    idle)."""
    starts, ends, cpu = [], [], 0.0
    for path, b in benchmarks.items():
        end = Path(path).stat().st_mtime
        starts.append(end - float(b.s.iloc[-1]))
        ends.append(end)
        cpu += float(b.cpu_time.fillna(0).sum())
    span = max(ends) - min(starts) if ends else 0.0
    return {"cores": cores, "span_s": span, "busy_core_s": cpu, "available_core_s": span * cores,
            "idle_core_s": max(0.0, span * cores - cpu), "busy_share": cpu / (span * cores) if span > 0 else math.nan}


def write_compute_table(benchmark_files: dict, out, cores: int | None = None) -> pd.DataFrame:
    """Markdown table of wall time, CPU time and peak RSS per (stage, system); with `cores` (the run's --cores), how
    busy the cores were (core_use).

    Keys: (stage, system) tuples or labels naming the system anywhere ("unmt mk-en relm", "unmt_mk-en_relm",
    "unmt/relm"; see _split_label). Rows keep the given order. Repeated measurements: mean time, max memory.
    """
    rows, read = [], {}
    for label, path in benchmark_files.items():
        b = read[path] = read_benchmark(path)
        stage, system = _split_label(label)
        rows.append({"stage": stage, "system": system, "runs": len(b), "wall_s": b.s.mean(),
                     "cpu_s": b.cpu_time.mean(), "max_rss_mb": b.max_rss.max()})
    df = pd.DataFrame(rows, columns=["stage", "system", "runs", "wall_s", "cpu_s", "max_rss_mb"])
    lines = ["## Compute", "", "| Stage | System | Wall time (h:m:s) | CPU time (h:m:s) | Peak memory (max RSS, MB) |",
             "|---|---|---:|---:|---:|"]
    for r in df.itertuples():
        mem = MISSING_MD if pd.isna(r.max_rss_mb) else f"{r.max_rss_mb:.0f}"
        runs = f" (mean of {r.runs})" if r.runs > 1 else ""
        lines.append(f"| {r.stage} | {DISPLAY.get(r.system, r.system) or MISSING_MD} | {hms(r.wall_s)}{runs} | "
                     f"{hms(r.cpu_s)} | {mem} |")
    peak = df.max_rss_mb.max() if len(df) else math.nan
    lines.append(f"| **Total** | | {hms(df.wall_s.sum())} | {hms(df.cpu_s.sum(min_count=1))} | "
                 f"{MISSING_MD if pd.isna(peak) else f'{peak:.0f} (max)'} |")
    lines += ["", "Wall and CPU time and peak resident memory as measured by Snakemake's `benchmark:` directive "
                  "(memory not sampled for jobs shorter than the sampling interval: –)."]
    if cores and benchmark_files:
        u = core_use(read, cores)
        text = (f"From the first benchmarked job's start to the last one's end: {hms(u['span_s'])} on {cores} cores "
                f"= {u['available_core_s'] / 60:.1f} core-minutes; busy (the jobs' CPU time) "
                f"{u['busy_core_s'] / 60:.1f} core-minutes ({100 * u['busy_share']:.0f}%), idle "
                f"**{u['idle_core_s'] / 60:.1f} core-minutes**. Jobs without a benchmark (downloads, vocabularies, "
                "tables) count as idle; a workflow run in several sessions counts the time between them as idle.")
        lines += ["", "## Core use", "", text]
    atomic_write_text(out, "\n".join(lines) + "\n")
    return df
