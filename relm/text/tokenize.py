"""Moses-style preprocessing of raw text (RE-LM/XLM pipeline), with sacremoses instead of the perl scripts.

Per line, as relm's scripts do: replace-unicode-punctuation | normalize-punctuation -l LG | remove-non-printing-char |
tokenizer -l LG -no-escape (cased, no aggressive hyphen splitting). Also the strict line reader every text stage
uses (UTF-8 checked, BOM, CRLF and bare-CR line ends tolerated), detokenization, BPE removal and the parallel-corpus
line-count check.

Overlong lines (`max_line_chars`, default MAX_LINE_CHARS; 0 = no limit): `on_long_line="error"` (the default) stops
with the file and line; `"skip"` drops such lines and logs how many. Skip only monolingual training corpora: dropping
a line of one side of a line-aligned valid/test set would misalign every later pair, so those keep "error".
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
from relm.files import CHUNK, atomic_output

MAX_LINE_CHARS = 10000  # default limit; longer lines are almost always a broken file (no newlines, binary data)
ON_LONG_LINE = ("error", "skip")
BOM = "\ufeff"
_NON_PRINTING = regex.compile(r"\p{C}")  # like remove-non-printing-char.perl: each one becomes a space
_BPE_MARK = re.compile(r"@@( |$)")
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as the surrogateescape handler keeps them
_PIECE = 1 << 16  # characters read at a time from an overlong line


def iter_lines(path: str | Path, max_line_chars: int | None = None, on_long_line: str = "error",
               on_skip: Callable[[int, int], None] | None = None) -> Iterator[str]:
    """Lines of a UTF-8 text file without their line ends.

    Line ends are "\\n", "\\r\\n" and a bare "\\r" (old Mac files); U+2028 and friends are not line ends. A BOM at the
    start of the file is dropped. Invalid UTF-8 raises InputError naming file and line. Empty lines are yielded as ""
    (they keep parallel corpora aligned).

    Lines over `max_line_chars` characters (None or 0: no limit) are never held in memory whole: on_long_line="error"
    raises InputError naming file, line and length; "skip" drops them and calls on_skip(line number, length).
    """
    if on_long_line not in ON_LONG_LINE:
        raise InputError(f"on_long_line must be one of {ON_LONG_LINE}, not {on_long_line!r}")
    limit = max_line_chars + 1 if max_line_chars else -1
    try:
        with open(path, encoding="utf-8", newline=None) as f:  # newline=None: "\r\n" and "\r" read as "\n"
            lineno = 0
            while line := f.readline(limit):
                lineno += 1
                if line.endswith("\n"):
                    line = line[:-1]
                elif len(line) == limit:  # more than max_line_chars characters before the line end
                    n = len(line)
                    while (piece := f.readline(_PIECE)) and not piece.endswith("\n"):
                        n += len(piece)
                    n += len(piece.rstrip("\n"))
                    if on_long_line == "skip":
                        if on_skip is not None:
                            on_skip(lineno, n)
                        continue
                    raise InputError(f"{path}:{lineno}: line has {n} characters, more than the limit "
                                     f"{max_line_chars} (max_line_chars; on_long_line 'skip' drops such lines)")
                yield line.removeprefix(BOM) if lineno == 1 else line
    except UnicodeDecodeError:  # raised for a whole block of text: find its line (rare, so a second pass is fine)
        raise _locate_bad_utf8(path) from None


def _locate_bad_utf8(path: str | Path) -> InputError:
    with open(path, encoding="utf-8", errors="surrogateescape", newline=None) as f:
        lineno, offset = 1, 0
        while piece := f.readline(_PIECE):  # bounded memory, also in a file without line ends
            if lineno == 1 and offset == 0:
                piece = piece.removeprefix(BOM)
            if _UNDECODABLE.search(piece):
                raw = piece.rstrip("\n").encode("utf-8", "surrogateescape")
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    bad = raw[e.start : e.start + 4]
                    return InputError(f"{path}:{lineno}: invalid UTF-8 (bytes {bad!r} at byte {offset + e.start} of "
                                      "the line)")
            if piece.endswith("\n"):
                lineno, offset = lineno + 1, 0
            else:
                offset += len(piece.encode("utf-8", "surrogateescape"))
    return InputError(f"{path}: invalid UTF-8")


def count_text_lines(path: str | Path) -> int:
    """Number of lines as iter_lines reads them ("\n", "\r\n" and bare "\r" end a line; an unterminated last
    line counts)."""
    n, cr, last = 0, False, b""
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            n += block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
            if cr and block.startswith(b"\n"):  # a CRLF split between two blocks
                n -= 1
            cr, last = block.endswith(b"\r"), block[-1:]
    return n + (last not in (b"", b"\n", b"\r"))


def check_parallel(path_a: str | Path, path_b: str | Path) -> int:
    """Line count shared by two sides of a parallel corpus; InputError naming both files if they differ."""
    for p in (path_a, path_b):
        if not Path(p).is_file():
            raise InputError(f"parallel file {p} does not exist")
    na, nb = count_text_lines(path_a), count_text_lines(path_b)
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
    max_line_chars: int = MAX_LINE_CHARS,
    on_long_line: str = "error",
    chunk_lines: int = 2000,
    log: Callable = eprint,
) -> int:
    """Tokenize a raw text file line by line (order and empty lines kept); returns the number of lines written.

    threads <= 0 uses every core. The output is written atomically; a bad input line raises InputError and leaves
    no output. Lines over `max_line_chars` characters (0: no limit) raise InputError, or with on_long_line="skip"
    are dropped and counted in the log (monolingual training corpora only, see the module docstring).
    """
    if on_long_line not in ON_LONG_LINE:
        raise InputError(f"on_long_line must be one of {ON_LONG_LINE}, not {on_long_line!r}")
    if max_line_chars < 0:
        raise InputError(f"max_line_chars must be 0 (no limit) or positive, not {max_line_chars}")
    threads = threads if threads > 0 else os.cpu_count() or 1
    size = os.path.getsize(inp)
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"tokenize {lang}", file=sys.stderr,
               disable=size < (4 << 20) or not sys.stderr.isatty())
    skipped: list[tuple[int, int]] = []  # (line, length) of the first few dropped lines
    n_skipped = 0

    def on_skip(lineno: int, n_chars: int) -> None:
        nonlocal n_skipped
        n_skipped += 1
        if len(skipped) < 5:
            skipped.append((lineno, n_chars))

    chunks = _chunks(iter_lines(inp, max_line_chars, on_long_line, on_skip), chunk_lines)
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
        if n_skipped and not n:
            raise InputError(f"{inp}: all {n_skipped} lines are longer than {max_line_chars} characters; "
                             "nothing left to tokenize")
    if n_skipped:
        where = ", ".join(f"line {i} ({c} chars)" for i, c in skipped)
        log(f"tokenize: skipped {n_skipped} of {n + n_skipped} lines of {inp} longer than {max_line_chars} "
            f"characters (on_long_line: skip), e.g. {where}")
    log(f"tokenize: {inp} -> {out} ({n} lines, lang {lang})")
    return n
