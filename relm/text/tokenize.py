"""Moses-style preprocessing of raw text (RE-LM/XLM pipeline), with sacremoses instead of the perl scripts.

Per line, as relm's scripts do: replace-unicode-punctuation | normalize-punctuation -l LG | remove-non-printing-char |
tokenizer -l LG -no-escape (cased, no aggressive hyphen splitting). Also the strict line reader every text stage
uses (UTF-8 checked, BOM and CRLF tolerated), detokenization, BPE removal and the parallel-corpus line-count check.
"""
from __future__ import annotations

import functools
import os
import re
import sys
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Iterator

import regex
from sacremoses import MosesDetokenizer, MosesPunctNormalizer, MosesTokenizer
from tqdm import tqdm

from relm.errors import InputError, eprint
from relm.files import atomic_output, count_lines

MAX_LINE_LEN = 10000  # characters; longer lines are almost always a broken file (no newlines, binary data)
BOM = b"\xef\xbb\xbf"
_NON_PRINTING = regex.compile(r"\p{C}")  # like remove-non-printing-char.perl: each one becomes a space
_BPE_MARK = re.compile(r"@@( |$)")


def iter_lines(path: str | Path, max_line_len: int | None = None) -> Iterator[str]:
    """Lines of a UTF-8 text file without their line ends.

    Split on "\\n" only (never on U+2028 and friends). A trailing "\\r" (CRLF files) and a BOM at the start of the
    file are dropped. Invalid UTF-8 or a line over `max_line_len` characters raises InputError naming file and line.
    Empty lines are yielded as "" (they keep parallel corpora aligned).
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            raw = raw.rstrip(b"\n").removesuffix(b"\r")
            if lineno == 1:
                raw = raw.removeprefix(BOM)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = raw[e.start : e.start + 4]
                msg = f"{path}:{lineno}: invalid UTF-8 (bytes {bad!r} at byte {e.start} of the line)"
                raise InputError(msg) from None
            if max_line_len is not None and len(line) > max_line_len:
                msg = f"{path}:{lineno}: line has {len(line)} characters, more than the limit {max_line_len}"
                raise InputError(msg)
            yield line


def check_parallel(path_a: str | Path, path_b: str | Path) -> int:
    """Line count shared by two sides of a parallel corpus; InputError naming both files if they differ."""
    na, nb = count_lines(path_a), count_lines(path_b)
    if na != nb:
        raise InputError(f"parallel files differ in length: {path_a} has {na} lines, {path_b} has {nb}")
    return na


@functools.lru_cache(maxsize=None)
def _moses(lang: str) -> tuple[MosesPunctNormalizer, MosesTokenizer]:
    norm = MosesPunctNormalizer(lang, pre_replace_unicode_punct=True)
    if lang not in ("en", "de", "es", "fr", "cs", "cz"):
        # normalize-punctuation.perl gives every language except en/cs its `,"` -> `",` quote rule; sacremoses only
        # de/es/fr. Insert it where the perl script has it: just before the (last) number rule.
        norm.substitutions[-1:-1] = norm.DE_ES_FR_QUOTATION_FOLLOWED_BY_COMMA
    return norm, MosesTokenizer(lang)


@functools.lru_cache(maxsize=None)
def _detokenizer(lang: str) -> MosesDetokenizer:
    return MosesDetokenizer(lang)


def normalize_tokenize_line(line: str, lang: str) -> str:
    """One raw line -> Moses-normalized, tokenized line (tokens separated by single spaces)."""
    norm, tok = _moses(lang)
    text = _NON_PRINTING.sub(" ", norm.normalize(line))
    return tok.tokenize(text, aggressive_dash_splits=False, return_str=True, escape=False)


def detokenize_line(line: str, lang: str) -> str:
    return _detokenizer(lang).detokenize(line.split(), return_str=True, unescape=False)


def remove_bpe(line: str) -> str:
    """Undo BPE: drop the "@@ " joiners and a trailing "@@"."""
    return _BPE_MARK.sub("", line)


def _tokenize_chunk(args: tuple[list[str], str]) -> list[str]:
    lines, lang = args
    return [normalize_tokenize_line(line, lang) for line in lines]


def _chunks(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def tokenize_file(
    inp: str | Path,
    out: str | Path,
    lang: str,
    threads: int = 1,
    max_line_len: int = MAX_LINE_LEN,
    chunk_lines: int = 2000,
    log: Callable = eprint,
) -> int:
    """Tokenize a raw text file line by line (order and empty lines kept); returns the number of lines.

    threads <= 0 uses every core. The output is written atomically; a bad input line raises InputError and leaves
    no output.
    """
    threads = threads if threads > 0 else os.cpu_count() or 1
    size = os.path.getsize(inp)
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"tokenize {lang}", file=sys.stderr,
               disable=size < (4 << 20) or not sys.stderr.isatty())
    chunks = _chunks(iter_lines(inp, max_line_len), chunk_lines)
    n = 0
    with atomic_output(out) as f, bar:
        pool = Pool(threads) if threads > 1 else None
        try:
            while window := [c for _, c in zip(range(4 * threads), chunks)]:  # bounded memory on huge inputs
                jobs = [(c, lang) for c in window]
                for src, done in zip(window, pool.map(_tokenize_chunk, jobs) if pool else map(_tokenize_chunk, jobs)):
                    f.write("".join(line + "\n" for line in done))
                    n += len(done)
                    if not bar.disable:
                        bar.update(sum(len(line.encode()) + 1 for line in src))
        finally:
            if pool:
                pool.terminate()
    log(f"tokenize: {inp} -> {out} ({n} lines, lang {lang})")
    return n
