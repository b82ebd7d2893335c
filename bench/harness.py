"""The benchmark harness: generated data, one fresh process per measurement, ratios, projection, report.

    python -m bench [--size small|large|both] [--only CASE[,CASE]] [--scale 68e6] [--work DIR] [--json PATH]
                    [--repeat K]

Every module in bench/cases is imported when the run reaches it (see bench/cases/__init__.py for the interface), so
a new case needs no registration. For each module and size the harness calls prepare() here, then runs every
(case, impl) in its own process (bench.worker) K times, interleaving the implementations so that they see the same
machine load, and keeps the median of each figure. Ratios compare each implementation with the case's "reference"
measured in the same run. With --scale N every case is projected to N sentences: by the module's project() if it has
one, else by project_linear (time and memory linear in sentences through the two sizes).

Case modules import from here: synthetic_text (the shared generated corpus), zipf_sample, fit_linear and fit_power.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import pkgutil
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SIZES = ("small", "large")
PAPER_SENTENCES = 68e6  # the paper's English (HMR) corpus, in sentences
WORKER_TIMEOUT_S = 3600
MIN_WORDS, MAX_WORDS = 5, 60  # words per generated line (uniform): mean 32.5
PACKAGES = ("torch", "numpy", "sacremoses", "subword-nmt")

# --- generated data --------------------------------------------------------------------------------------------------

_ONSETS = list("bcdfghjklmnprstvwz") + ["ch", "sh", "st", "tr", "kr"]
_VOWELS = list("aeiou") + ["ai", "ou"]
_CODAS = [""] * 6 + list("nrstlk")


def zipf_sample(rng: np.random.Generator, n: int, n_types: int, s: float = 1.1) -> np.ndarray:
    """n draws of ranks 0..n_types-1 with P(rank r) proportional to (r + 1) ** -s (Zipf's law)."""
    cdf = np.cumsum(np.arange(1, n_types + 1, dtype=np.float64) ** -s)
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1]), n_types - 1)


def _vocabulary(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct words of random syllables; frequent ranks get shorter words (1 syllable at the top, up to 4)."""
    words, seen = [], set()
    while len(words) < n:
        n_syl = 1 + min(3, int(math.log10(len(words) + 1)))
        w = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                    + _CODAS[rng.integers(len(_CODAS))] for _ in range(n_syl))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def synthetic_text(path: str | Path, n_lines: int, seed: int = 0, vocab_words: int = 50_000,
                   zipf_s: float = 1.1) -> Path:
    """Write n_lines of generated text to `path` (atomically) and return the path.

    Words are random syllable strings drawn by Zipf's law (exponent zipf_s) from vocab_words types; a line has
    MIN_WORDS..MAX_WORDS words (uniform), a capital first letter and a final . ? or !, with some commas, numbers,
    quotes, hyphens and "'s" so that Moses normalization and tokenization have work to do. The same arguments give the
    same file (for a given numpy version); a longer file with the same seed does not start with the shorter one.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng, vocab_words)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for start in range(0, n_lines, 10_000):  # blocks: bounded memory for large files
            n = min(10_000, n_lines - start)
            lengths = rng.integers(MIN_WORDS, MAX_WORDS + 1, n)
            ids = zipf_sample(rng, int(lengths.sum()), vocab_words, zipf_s)
            extra = rng.random(len(ids))  # one draw per word decides its decoration
            ends = rng.choice([".", "?", "!"], n, p=[0.85, 0.1, 0.05])
            lines, k = [], 0
            for length, end in zip(lengths, ends):
                words = []
                for _ in range(length):
                    w, e = vocab[ids[k]], extra[k]
                    if e < 0.01:
                        w = f"{int(e * 1e7) % 9000 + 10:,}"
                    elif e < 0.02:
                        w = f'"{w}"'
                    elif e < 0.03:
                        w = f"{w}-{vocab[ids[k - 1]]}"
                    elif e < 0.04:
                        w += "'s"
                    elif e < 0.10:
                        w += ","
                    words.append(w)
                    k += 1
                words[0] = words[0][:1].upper() + words[0][1:]
                lines.append(" ".join(words).rstrip(",") + end + "\n")
            f.writelines(lines)
    os.replace(tmp, path)
    return path


def file_digest(path: str | Path) -> str:
    """sha1 of a file, read in pieces: a digest taken inside a measured function adds no memory that grows with the
    output (reading the whole file would)."""
    import hashlib
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# --- fits ------------------------------------------------------------------------------------------------------------

def fit_linear(xs, ys) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b*x (through both points when there are two)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        raise ValueError("a linear fit needs at least two different x")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def fit_power(xs, ys) -> tuple[float, float]:
    """(K, beta) of y = K * x**beta, fitted in log space (Heaps' law: distinct words = K * tokens**beta)."""
    a, b = fit_linear([math.log(x) for x in xs], [math.log(y) for y in ys])
    return math.exp(a), b


def seconds(row: dict) -> float:
    """The measured seconds of a row: its timed part if the function reported one, else its wall time."""
    return row.get("timed_s") or row["wall_s"]


def project_linear(rows: list[dict], n: float, flat_memory=(), memory: str = "peak_mb") -> dict:
    """Default projection: per (case, impl), seconds = a + b*x through the sizes, x = the rows' "sentences" (default:
    items), evaluated at x = n; the `memory` figure likewise, except for the cases or (case, impl) pairs in
    flat_memory, whose memory does not grow with the data (the largest measured value is kept). Implementations
    measured at one x only are left out."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        groups.setdefault((r["case"], r["impl"]), {})[r.get("sentences", r["items"])] = r
    out = []
    for (case, impl), by_x in groups.items():
        if len(by_x) < 2:
            continue
        xs = sorted(by_x)
        a, b = fit_linear(xs, [seconds(by_x[x]) for x in xs])
        flat = case in flat_memory or (case, impl) in flat_memory
        if flat:
            mem = max(by_x[x][memory] for x in xs)
        else:
            am, bm = fit_linear(xs, [by_x[x][memory] for x in xs])
            mem = am + bm * n
        what = "peak MB" if memory == "peak_mb" else "private MB"
        out.append(dict(case=case, impl=impl, seconds=a + b * n, peak_mb=mem, s_per_sentence=b,
                        model=f"seconds linear in sentences; {what} " + ("flat (the largest measured)" if flat
                                                                          else "linear in sentences")))
    return {"model": "linear: seconds and peak MB = a + b*sentences through the measured sizes", "projections": out}


# --- machine and versions --------------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = None
    try:
        kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        ram = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return dict(cpu=cpu, cores=os.cpu_count(), usable_cores=usable, ram_gib=ram, os=platform.platform())


def versions() -> dict:
    v = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            v[p] = version(p)
        except PackageNotFoundError:
            v[p] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        v["relm"] = commit + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        v["relm"] = None
    return v


# --- running ---------------------------------------------------------------------------------------------------------

def case_modules() -> list[str]:
    import bench.cases
    return sorted(m.name for m in pkgutil.iter_modules(bench.cases.__path__) if not m.name.startswith("_"))


def run_one(module: str, case: str, impl: str, size: str, work: Path, timeout: float = WORKER_TIMEOUT_S) -> dict:
    """Measure one (case, impl, size) in a fresh process; a failure gives a row with "error"."""
    key = dict(module=module, case=case, impl=impl, size=size)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        try:
            p = subprocess.run([sys.executable, "-m", "bench.worker", module, case, impl, size, str(work), str(out)],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {**key, "error": f"timed out after {timeout:.0f} s"}
        if p.returncode != 0 or not out.exists():
            tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
            return {**key, "error": f"exit {p.returncode}: " + " | ".join(tail)}
        return json.loads(out.read_text())


def median_row(runs: list[dict]) -> dict:
    """The median of every numeric figure over repeated runs (other fields from the first run)."""
    if len(runs) == 1 or any("error" in r for r in runs):
        return next((r for r in runs if "error" in r), runs[0])
    row = dict(runs[0])
    for k, v in row.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            row[k] = statistics.median(r[k] for r in runs)
    row["repeats"] = len(runs)
    return row


def add_ratios(rows: list[dict]) -> None:
    """speed_vs_reference = items/s ÷ the reference's; memory_vs_reference = peak_mb ÷ the reference's;
    same_output = digest equal to the reference's (when both report one)."""
    refs = {(r["case"], r["size"]): r for r in rows if r["impl"] == "reference" and "error" not in r}
    for r in rows:
        ref = refs.get((r["case"], r["size"]))
        if ref is None or "error" in r:
            continue
        r["speed_vs_reference"] = r["items_per_s"] / ref["items_per_s"] if ref["items_per_s"] else None
        r["memory_vs_reference"] = r["peak_mb"] / ref["peak_mb"] if ref["peak_mb"] >= 1 else None
        if "digest" in r and "digest" in ref:
            r["same_output"] = r["digest"] == ref["digest"]


def run(sizes, only: set[str] | None, work: Path, repeat: int, scale: float | None, log=print,
        modules: list[str] | None = None) -> dict:
    """Run the benchmarks and return the report (machine, versions, rows, projections). modules: importable names
    of case modules (default: every module of bench/cases)."""
    report = dict(machine=machine(), versions=versions(), load_before=list(os.getloadavg()), repeat=repeat,
                  sizes=list(sizes), started=time.strftime("%Y-%m-%d %H:%M:%S"), rows=[], projections=[])
    for name in modules or case_modules():
        try:
            mod = importlib.import_module(name if "." in name else f"bench.cases.{name}")
        except Exception as e:  # a module being written: report it, run the others
            report["rows"].append(dict(module=name, case=name, impl="-", size="-", error=f"import: {e!r}"))
            continue
        cases = [c for c in mod.CASES if only is None or c in only or name in only]
        if not cases:
            continue
        mod_work = work / name.rsplit(".", 1)[-1]
        mod_rows = []
        for size in sizes:
            mod.prepare(size, mod_work)
            for case in cases:
                runs: dict[str, list[dict]] = {impl: [] for impl in mod.CASES[case]}
                for _ in range(repeat):
                    for impl in runs:
                        r = run_one(name, case, impl, size, mod_work)
                        log(f"[bench] {case} {impl} {size}: " + (r["error"] if "error" in r else
                                                                  f"{r['wall_s']:.2f} s, {r['peak_mb']:.0f} MB"))
                        runs[impl].append(r)
                mod_rows += [median_row(rs) for rs in runs.values()]
        report["rows"] += mod_rows
        if scale:
            ok = [r for r in mod_rows if "error" not in r]
            proj = getattr(mod, "project", None)
            result = (proj(ok, scale) if proj else None) or project_linear(ok, scale)
            for p in result["projections"]:
                report["projections"].append({"model": result["model"], **p, "module": name, "n": scale})
    add_ratios(report["rows"])
    report["load_after"] = list(os.getloadavg())
    return report


# --- report ----------------------------------------------------------------------------------------------------------

def _num(v, digits=3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, int) or abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def markdown(report: dict) -> str:
    m, v = report["machine"], report["versions"]
    threads = next((r["threads"] for r in report["rows"] if "threads" in r), None)
    lb, la = report["load_before"], report.get("load_after", [None])
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['ram_gib']} GiB RAM, {m['os']}; "
        f"load average (1 min) {lb[0]:.2f} before, {la[0]:.2f} after.",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items())
        + (f"; torch threads {threads}." if threads else "."),
        f"Median of {report['repeat']} run(s), each in a fresh process. speed = items/s ÷ the reference's "
        "(> 1: faster); memory = peak above the baseline ÷ the reference's (< 1: smaller); private MB = the peak of "
        "the memory the process owns (without mapped file pages), self only.",
        "",
        "| case | size | impl | items | unit | wall s | CPU s | peak MB | private MB | items/s | speed vs ref "
        "| memory vs ref | same output |",
        "|---|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    errors = []
    for r in report["rows"]:
        if "error" in r:
            errors.append(f"- {r['module']} {r['case']} {r['impl']} {r['size']}: {r['error']}")
            continue
        ref = r["impl"] == "reference"
        lines.append("| " + " | ".join([
            r["case"], r["size"], r["impl"], _num(r["items"]), r["unit"], _num(r["wall_s"]), _num(r["cpu_s"]),
            _num(r["peak_mb"]), _num(r.get("private_mb")), _num(r["items_per_s"]),
            "1 (ref)" if ref else _num(r.get("speed_vs_reference")),
            "1 (ref)" if ref else _num(r.get("memory_vs_reference")),
            "" if ref else _num(r.get("same_output")),
        ]) + " |")
    if errors:
        lines += ["", "Failed:"] + errors
    if report["projections"]:
        n = report["projections"][0]["n"]
        lines += ["", f"Projection to {n:,.0f} sentences:", "",
                  "| case | impl | hours | peak MB | model |", "|---|---|--:|--:|---|"]
        for p in report["projections"]:
            lines.append(f"| {p['case']} | {p['impl']} | {_num(p['seconds'] / 3600)} | {_num(p.get('peak_mb'))} | "
                         f"{p['model']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=["small", "large", "both"], default="small")
    ap.add_argument("--only", help="comma-separated case or module names (default: all)")
    ap.add_argument("--scale", type=float, help=f"project to this many sentences (the paper: {PAPER_SENTENCES:.0e})")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "relm-bench",
                    help="generated data and outputs (kept between runs; default %(default)s)")
    ap.add_argument("--json", type=Path, help="write the report here (default WORK/bench.json)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement; the median is reported")
    a = ap.parse_args(argv)
    if a.repeat < 1:
        ap.error("--repeat must be at least 1")
    sizes = SIZES if a.size == "both" else (a.size,)
    only = set(a.only.split(",")) if a.only else None
    a.work.mkdir(parents=True, exist_ok=True)
    report = run(sizes, only, a.work.resolve(), a.repeat, a.scale, log=lambda s: print(s, file=sys.stderr))
    out = a.json or a.work / "bench.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    print(f"\n[bench] report written to {out}", file=sys.stderr)
    return 1 if any("error" in r for r in report["rows"]) else 0
