"""BPE: applying codes (`relm bpe apply`) and learning them (`relm bpe learn`), against subword-nmt.

bpe_apply: relm.text.bpe.apply_file in one process (relm_1proc) and with a process pool over every usable core
(relm_pool), against subword-nmt's apply_bpe (BPE.process_line over the file, one process: the reference), and
fastBPE's C++ `fast applybpe` (fastbpe_cpp) when the environment variable FASTBPE names that program. The `fastBPE`
package does not build from pip under Python >= 3.11 (its generated C++ includes longintrepr.h); the program builds
from the package's source: g++ -std=c++11 -pthread -O3 fastBPE/main.cc -IfastBPE -o fast. Input: the training text
of bpe_learn, segmented with its codes (as the workflow segments the training corpus). All outputs must be equal.

bpe_learn: relm.text.bpe.learn_codes (counting over every usable core, then our merge loop) against subword-nmt's
learn_bpe module function on the same text (`subword-nmt learn-bpe -s MERGES < text`), and HuggingFace tokenizers'
BpeTrainer (hf_tokenizers, when importable; its own counting, all cores; it breaks ties differently, so its codes
differ: compare speed only). relm's codes must equal subword-nmt's.

Input: bench.harness.synthetic_text (Zipfian words of random syllables, many word types), SIZES lines, MERGES merges.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import file_digest, fit_linear, fit_power, synthetic_text
from relm.text.bpe import apply_file, count_words, learn_codes

SIZES = {"small": {"lines": 20_000, "merges": 4000}, "large": {"lines": 100_000, "merges": 4000}}
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
quiet = lambda *a: None


def _text(size: str, work: Path) -> Path:
    return work / f"bpe.{size}.txt"


def _codes(size: str, work: Path) -> Path:
    return work / f"bpe.{size}.codes"


def prepare(size: str, work: Path) -> None:
    """The text, and its codes for bpe_apply (learned by relm; equal to subword-nmt's, which bpe_learn checks)."""
    if not _text(size, work).exists():
        synthetic_text(_text(size, work), SIZES[size]["lines"], seed=7)
    if not _codes(size, work).exists():
        learn_codes([_text(size, work)], _codes(size, work), SIZES[size]["merges"], log=quiet, workers=CORES)


def _digest(path: Path) -> str:
    digest = file_digest(path)
    path.unlink()
    return digest


# --- apply -----------------------------------------------------------------------------------------------------------

def _relm_apply(workers: int):
    def run(size: str, work: Path) -> dict:
        out = work / f"bpe.{size}.relm{workers}.out"
        n = apply_file(_codes(size, work), _text(size, work), out, log=quiet, workers=workers)
        return {"items": n, "unit": "lines", "sentences": n, "workers": workers, "digest": _digest(out)}
    return run


def reference_apply(size: str, work: Path) -> dict:
    from subword_nmt.apply_bpe import BPE

    with open(_codes(size, work), encoding="utf-8") as f:
        bpe = BPE(f)
    out, n = work / f"bpe.{size}.subword-nmt.out", 0
    with open(_text(size, work), encoding="utf-8") as f, open(out, "w", encoding="utf-8") as g:
        for line in f:
            g.write(bpe.process_line(line))
            n += 1
    return {"items": n, "unit": "lines", "sentences": n, "digest": _digest(out)}


def fastbpe_apply(size: str, work: Path) -> dict:
    """fastBPE's applybpe (its own threads) with the codes in its "left right count" format (counts unused)."""
    codes = work / f"bpe.{size}.fastbpe-codes"
    lines = _codes(size, work).read_text(encoding="utf-8").split("\n")[1:-1]
    codes.write_text("".join(f"{line} 1\n" for line in lines), encoding="utf-8")
    out = work / f"bpe.{size}.fastbpe.out"
    t = time.perf_counter()
    subprocess.run([os.environ["FASTBPE"], "applybpe", str(out), str(_text(size, work)), str(codes)], check=True,
                   capture_output=True)
    timed = time.perf_counter() - t
    n = SIZES[size]["lines"]
    return {"items": n, "unit": "lines", "sentences": n, "timed_s": timed, "digest": _digest(out)}


# --- learn -----------------------------------------------------------------------------------------------------------

def relm_learn(size: str, work: Path) -> dict:
    """learn_codes, timed in its two parts (counting words, merge loop) for the projection."""
    from relm.text.bpe import learn_merges

    text, merges = _text(size, work), SIZES[size]["merges"]
    t0 = time.perf_counter()
    counts = count_words([text], workers=CORES)
    t1 = time.perf_counter()
    pairs = learn_merges(counts, merges)
    t2 = time.perf_counter()
    codes = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in pairs)
    n = SIZES[size]["lines"]
    assert codes == _codes(size, work).read_text(encoding="utf-8")  # learn_codes writes the same
    return {"items": n, "unit": "lines", "sentences": n, "types": len(counts), "tokens": sum(counts.values()),
            "merges": len(pairs), "count_s": t1 - t0, "merge_s": t2 - t1, "workers": CORES,
            "digest": hashlib.sha1(codes.encode()).hexdigest()}


def reference_learn(size: str, work: Path) -> dict:
    """subword-nmt's learn_bpe on the text, timed in two parts as relm_learn: its get_vocabulary on the text, then
    learn_bpe on that vocabulary as a dictionary (what learn_bpe does after reading the text)."""
    import subword_nmt.learn_bpe as snmt

    snmt.tqdm = lambda it, *a, **k: it  # no progress bar in the benchmark's log
    t0 = time.perf_counter()
    with open(_text(size, work), encoding="utf-8") as f:
        vocab = snmt.get_vocabulary(f)
    t1 = time.perf_counter()
    out = io.StringIO()
    snmt.learn_bpe(io.StringIO("".join(f"{w} {c}\n" for w, c in vocab.items())), out, SIZES[size]["merges"],
                   is_dict=True)
    t2 = time.perf_counter()
    n = SIZES[size]["lines"]
    return {"items": n, "unit": "lines", "sentences": n, "types": len(vocab), "merges": out.getvalue().count("\n") - 1,
            "count_s": t1 - t0, "merge_s": t2 - t1, "digest": hashlib.sha1(out.getvalue().encode()).hexdigest()}


def hf_learn(size: str, work: Path) -> dict:
    """tokenizers' BpeTrainer with subword-nmt's conventions (split on whitespace, "</w>" on the last character,
    min_frequency 2); its vocabulary size is alphabet + merges, so the alphabet is read first (not timed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    text, merges = _text(size, work), SIZES[size]["merges"]
    alphabet: set[str] = set()
    with open(text, encoding="utf-8") as f:
        for line in f:
            alphabet.update(line)
    alphabet -= {" ", "\n"}
    t = time.perf_counter()
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # an end-of-word variant per character at most: 2 x alphabet + merges bounds the vocabulary from above
    trainer = trainers.BpeTrainer(vocab_size=2 * len(alphabet) + merges, min_frequency=2, show_progress=False,
                                  end_of_word_suffix="</w>")
    tok.train([str(text)], trainer)
    timed = time.perf_counter() - t
    pairs = json.loads(tok.to_str())["model"]["merges"][:merges]
    codes = "#version: 0.2\n" + "".join((p if isinstance(p, str) else " ".join(p)) + "\n" for p in pairs)
    n = SIZES[size]["lines"]
    return {"items": n, "unit": "lines", "sentences": n, "merges": len(pairs), "timed_s": timed,
            "digest": hashlib.sha1(codes.encode()).hexdigest()}


def _have_tokenizers() -> bool:
    try:
        import tokenizers  # noqa: F401
        return True
    except ImportError:
        return False


CASES = {
    "bpe_apply": {"relm_1proc": _relm_apply(1), "relm_pool": _relm_apply(CORES), "reference": reference_apply,
                  **({"fastbpe_cpp": fastbpe_apply} if os.environ.get("FASTBPE") else {})},
    "bpe_learn": {"relm": relm_learn, "reference": reference_learn,
                  **({"hf_tokenizers": hf_learn} if _have_tokenizers() else {})},
}


def project(rows: list[dict], n: float) -> dict | None:
    """Word types V by Heaps' law, V = K * lines**beta, fitted on relm's bpe_learn rows (both sizes). Then, through
    the two sizes: bpe_apply seconds linear in lines and peak memory linear in V (the word cache); bpe_learn peak
    memory linear in V, counting seconds linear in lines and merge-loop seconds linear in V (relm and the reference
    time the two apart; hf_tokenizers' whole time is taken as linear in V). For SIZES' merge count: more merges
    cost more."""
    by: dict[tuple[str, str], dict[int, dict]] = {}
    for r in rows:
        by.setdefault((r["case"], r["impl"]), {})[r["sentences"]] = r
    relm = by.get(("bpe_learn", "relm"), {})
    if len(relm) < 2:
        return None
    xs = sorted(relm)
    k, beta = fit_power(xs, [relm[x]["types"] for x in xs])

    def types(x: float) -> float:
        return k * x ** beta

    def lines(x: float) -> float:
        return x

    def line_at_n(rs: dict[int, dict], field: str, scale) -> float:
        """rs[x][field] = a + b * scale(x) through the sizes, evaluated at x = n."""
        a, b = fit_linear([scale(x) for x in rs], [rs[x].get(field) or rs[x]["wall_s"] for x in rs])
        return a + b * scale(n)

    out = []
    for (case, impl), rs in by.items():
        if len(rs) < 2:
            continue
        if case == "bpe_apply":
            secs = line_at_n(rs, "timed_s", lines)
        elif all("count_s" in r for r in rs.values()):  # relm and the reference time counting and merging apart
            secs = line_at_n(rs, "count_s", lines) + line_at_n(rs, "merge_s", types)
        else:
            secs = line_at_n(rs, "timed_s", types)
        out.append({"case": case, "impl": impl, "seconds": secs, "peak_mb": line_at_n(rs, "peak_mb", types),
                    "types": types(n), "heaps_k": k, "heaps_beta": beta})
    return {"model": f"Heaps' law V = {k:.3g} * lines^{beta:.3f}; apply: s linear in lines, MB in V; learn: s and MB "
                     "linear in V (+ counting linear in lines)", "projections": out}


if __name__ == "__main__":  # a quick check without the harness: python -m bench.cases.bpe WORK [small|large]
    work, size = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "small"
    work.mkdir(parents=True, exist_ok=True)
    prepare(size, work)
    for case, impls in CASES.items():
        for name, fn in impls.items():
            t = time.perf_counter()
            r = fn(size, work)
            print(case, name, f"{time.perf_counter() - t:.2f} s", {k: v for k, v in r.items() if k != "digest"},
                  r.get("digest", "")[:8])
