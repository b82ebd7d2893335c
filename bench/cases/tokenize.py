"""Moses normalization + tokenization of raw text: `relm tokenize` with 1 and 2 processes against the sacremoses
library in one process, running the same per-line pipeline (what a user would write instead of relm).

relm_1 / relm_2: relm.text.tokenize.tokenize_file with threads 1 / 2 (strict line reader, chunks of lines, process
pool, atomic output). reference: a plain loop over the file calling sacremoses' normalizer and tokenizer as relm does
(relm.text.tokenize.normalize_tokenize_line: replace-unicode-punctuation, normalize, non-printing characters to
spaces, tokenize without escaping). The outputs are compared by digest. Input: bench.harness.synthetic_text, English.
"""
from __future__ import annotations

from pathlib import Path

import regex
from sacremoses import MosesPunctNormalizer, MosesTokenizer

from bench.harness import file_digest, project_linear, synthetic_text
from relm.text.tokenize import tokenize_file

SIZES = {"small": {"lines": 20_000}, "large": {"lines": 80_000}}
LANG = "en"


def _raw(size: str, work: Path) -> Path:
    return work / f"raw.{size}.txt"


def prepare(size: str, work: Path) -> None:
    if not _raw(size, work).exists():
        synthetic_text(_raw(size, work), SIZES[size]["lines"], seed=1)


def _result(out: Path, n: int) -> dict:
    digest = file_digest(out)
    out.unlink()
    return {"items": n, "unit": "lines", "sentences": n, "digest": digest}


def _relm(threads: int):
    def run(size: str, work: Path) -> dict:
        out = work / f"tok.relm{threads}.{size}.txt"
        n = tokenize_file(_raw(size, work), out, LANG, threads=threads, log=lambda *_: None)
        return _result(out, n)
    return run


def reference(size: str, work: Path) -> dict:
    norm, tok = MosesPunctNormalizer(LANG, pre_replace_unicode_punct=True), MosesTokenizer(LANG)
    non_printing = regex.compile(r"\p{C}")
    out, n = work / f"tok.reference.{size}.txt", 0
    with open(_raw(size, work), encoding="utf-8") as f, open(out, "w", encoding="utf-8") as g:
        for line in f:
            text = non_printing.sub(" ", norm.normalize(line.rstrip("\n")))
            g.write(tok.tokenize(text, aggressive_dash_splits=False, return_str=True, escape=False) + "\n")
            n += 1
    return _result(out, n)


CASES = {"tokenize": {"relm_1": _relm(1), "relm_2": _relm(2), "reference": reference}}


def project(rows: list[dict], n: float) -> dict:
    """Seconds linear in lines; memory flat (lines are read and written in chunks: measured flat in-process, 40k and
    160k lines within 1 MB)."""
    return project_linear(rows, n, flat_memory={"tokenize"})
