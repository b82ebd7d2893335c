"""Score translations: sacreBLEU BLEU/chrF++ on detokenized text, the original's tokenized BLEU, significance.

The original RE-LM/XLM code reports `multi-bleu.perl` on Moses-tokenized, BPE-removed text (case-sensitive, no
smoothing). That number is kept as `tok_bleu` so our results can be put next to the paper's; the headline numbers
are sacreBLEU on detokenized text, reported with their signatures. `paired_bootstrap` wraps sacreBLEU's paired
bootstrap resampling test (the Moses `bootstrap-hypothesis-difference-significance.pl` procedure).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, Sequence

from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from relm.files import atomic_write_text
from relm.text.tokenize import iter_lines, normalize_tokenize_line


def read_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file without their line ends (split on "\\n" only; bad UTF-8 names file and line)."""
    return list(iter_lines(path))


def write_json(obj, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _tok_bleu_metric() -> BLEU:
    # multi-bleu.perl: whitespace split, case-sensitive, BLEU = 0 as soon as one n-gram precision is 0 (= smooth none)
    return BLEU(tokenize="none", smooth_method="none", force=True)


def _tok_suffix(tgt_lang: str) -> str:
    return f"|pretok:relm-moses-{tgt_lang}|debpe:yes|style:multi-bleu.perl"


def tokenize_lines(lines: Sequence[str], lang: str) -> list[str]:
    """The training pipeline's normalization + Moses tokenization (no BPE), line by line."""
    return [normalize_tokenize_line(line, lang) if line.strip() else "" for line in lines]


def _chrf_pp() -> CHRF:
    """chrF++ (Popović 2017): character n-grams plus word uni- and bigrams; signature '...nw:2...'."""
    return CHRF(word_order=2)


def score_lines(hyps: Sequence[str], refs: Sequence[str], tgt_lang: str, srcs: Sequence[str] | None = None) -> dict:
    """Metrics dict + copy-baseline BLEU for detokenized hypotheses/references (and optionally sources)."""
    bleu, chrf, tbleu = BLEU(), _chrf_pp(), _tok_bleu_metric()
    metrics = {
        "bleu": {"score": bleu.corpus_score(hyps, [refs]).score, "signature": bleu.get_signature().format()},
        "chrf++": {"score": chrf.corpus_score(hyps, [refs]).score, "signature": chrf.get_signature().format()},
        "tok_bleu": {
            "score": tbleu.corpus_score(tokenize_lines(hyps, tgt_lang), [tokenize_lines(refs, tgt_lang)]).score,
            "signature": tbleu.get_signature().format() + _tok_suffix(tgt_lang),
        },
    }
    copy_bleu = None if srcs is None else BLEU().corpus_score(srcs, [refs]).score
    return {"metrics": metrics, "copy_bleu": copy_bleu}


def _check_aligned(a: Sequence, a_name, b: Sequence, b_name, what="hypothesis") -> None:
    if len(a) != len(b):
        raise ValueError(
            f"line count mismatch: {what} file {a_name} has {len(a)} lines but {b_name} has {len(b)} lines"
        )


def score_file(hyp, ref, tgt_lang: str, src=None, meta: dict | None = None, out=None) -> dict:
    """Score a detokenized hypothesis file against its reference; write the result JSON to `out` if given.

    meta supplies pair/system/direction/split/seed (and src_lang, else taken from direction "src-tgt").
    """
    meta = dict(meta or {})
    hyps, refs = read_lines(hyp), read_lines(ref)
    _check_aligned(hyps, hyp, refs, ref)
    if not refs:
        raise ValueError(f"reference file {ref} is empty")
    srcs = None
    if src is not None:
        srcs = read_lines(src)
        _check_aligned(srcs, src, refs, ref, what="source")
    direction = meta.get("direction")
    if direction and direction.split("-")[-1] != tgt_lang:
        raise ValueError(f"direction {direction!r} does not translate into the target language {tgt_lang!r}")
    src_lang = meta.get("src_lang") or (direction.split("-")[0] if direction else None)
    result = {
        "pair": meta.get("pair"),
        "system": meta.get("system"),
        "direction": direction or (f"{src_lang}-{tgt_lang}" if src_lang else None),
        "split": meta.get("split"),
        "seed": int(meta.get("seed") or 0),
        "src_lang": src_lang,
        "tgt_lang": tgt_lang,
        "n_lines": len(refs),
        "hyp": str(hyp),
        "ref": str(ref),
        **score_lines(hyps, refs, tgt_lang, srcs),
    }
    if src is not None:
        result["src"] = str(src)
    if out is not None:
        write_json(result, out)
    return result


class Significance(NamedTuple):
    p_value: float
    score: float  # system
    baseline: float
    mean: float  # bootstrap mean of the system's score
    ci: float  # half-width of its 95% confidence interval
    signature: str


@contextmanager
def _sacrebleu_seed(seed: int | None):
    # PairedTest reads its seed from this environment variable only
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = "None" if seed is None else str(seed)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = old


def paired_bootstrap_many(
    systems: dict[str, Sequence[str]],
    hyps_base: Sequence[str],
    refs: Sequence[str],
    n_samples: int = 1000,
    seed: int = 12345,
    metric: str = "bleu",
    tgt_lang: str | None = None,
    pretokenized: bool = False,
) -> dict[str, Significance]:
    """sacreBLEU's paired bootstrap test of each system against one baseline (same resamples for all systems).

    Lines are detokenized text; metric: "bleu" | "chrf++" | "tok_bleu" (the latter tokenizes all lines for tgt_lang
    first, unless pretokenized). p_value: probability of a score difference this large by chance.
    seed 0 or None = unseeded (sacreBLEU's convention).
    """
    makers = {"bleu": BLEU, "chrf++": _chrf_pp, "tok_bleu": _tok_bleu_metric}
    if metric not in makers:
        raise ValueError(f"unknown metric {metric!r} (bleu, chrf++, tok_bleu)")
    for name, hyps in {**systems, "baseline": hyps_base}.items():
        _check_aligned(hyps, name, refs, "reference", what="hypothesis (lines)")
    if metric == "tok_bleu" and not pretokenized:
        if tgt_lang is None:
            raise ValueError("paired_bootstrap(metric='tok_bleu') needs tgt_lang")
        tok = lambda x: tokenize_lines(x, tgt_lang)  # noqa: E731
        systems, hyps_base, refs = {k: tok(v) for k, v in systems.items()}, tok(hyps_base), tok(refs)
    names = list(systems)
    with _sacrebleu_seed(seed):
        test = PairedTest(
            [("__baseline__", list(hyps_base))] + [(n, list(systems[n])) for n in names],
            {metric: makers[metric]()},
            references=[list(refs)],
            test_type="bs",
            n_samples=n_samples,
        )
        sigs, scores = test()
    (key,) = sigs
    base, results = scores[key][0], scores[key][1:]
    signature = sigs[key].format() + (_tok_suffix(tgt_lang or "?") if metric == "tok_bleu" else "")
    out = {}
    for name, r in zip(names, results):
        # sacreBLEU counts resampled differences strictly greater than the observed one: with identical outputs every
        # difference is 0 and it reports p = 1/(n+1), "significant". Identical systems are not different: p = 1.
        p_value = 1.0 if list(systems[name]) == list(hyps_base) else float(r.p_value)
        out[name] = Significance(p_value, float(r.score), float(base.score), float(r.mean), float(r.ci), signature)
    return out


def paired_bootstrap(hyps_sys: Sequence[str], hyps_base: Sequence[str], refs: Sequence[str], n_samples: int = 1000,
                     seed: int = 12345, metric: str = "bleu", tgt_lang: str | None = None,
                     pretokenized: bool = False) -> Significance:
    """Paired bootstrap test of one system against a baseline; see paired_bootstrap_many."""
    return paired_bootstrap_many({"system": hyps_sys}, hyps_base, refs, n_samples, seed, metric, tgt_lang,
                                 pretokenized)["system"]


def paired_bootstrap_files(hyp_sys, hyp_base, ref, **kwargs) -> Significance:
    """paired_bootstrap on files; line-count mismatches name the files."""
    hs, hb, r = read_lines(hyp_sys), read_lines(hyp_base), read_lines(ref)
    _check_aligned(hs, hyp_sys, r, ref)
    _check_aligned(hb, hyp_base, r, ref)
    return paired_bootstrap(hs, hb, r, **kwargs)
