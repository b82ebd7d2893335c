"""BPE: learn codes with subword-nmt, apply them with our own cached applier (same output as subword-nmt's apply_bpe).

RE-LM used fastBPE; subword-nmt implements the same algorithm (codes file: optional "#version: 0.2" line, then one
"left right" merge per line, in merge order). Segmented words are joined with "@@ " as in both tools. Codes written
by fastBPE (a released model's) are read after `convert_fastbpe_codes`.
"""
from __future__ import annotations

import functools
import io
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

import subword_nmt.learn_bpe as _learn
from tqdm import tqdm

from relm.errors import InputError, eprint
from relm.files import atomic_output, count_lines
from relm.text.tokenize import iter_lines

SEP = "@@"
EOW = "</w>"


def count_words(inputs: list[str | Path]) -> Counter:
    """Word counts over the concatenated inputs, split on single spaces, in order of first occurrence."""
    counts: Counter = Counter()
    for path in inputs:
        for line in iter_lines(path):
            counts.update(w for w in line.strip(" ").split(" ") if w)
    return counts


def learn_codes(
    inputs: list[str | Path], codes_out: str | Path, merges: int, min_frequency: int = 2, log: Callable = eprint
) -> int:
    """Learn `merges` BPE merges jointly on all `inputs` (tokenized text); returns the number of merges written.

    Equals `cat inputs | subword-nmt learn-bpe -s merges` (ties between equally frequent words follow first occurrence).
    """
    counts = count_words(inputs)
    if any("\r" in w for w in counts):  # subword-nmt's dict reader would strip it and mangle the word
        raise InputError(f"tokens in {inputs} contain carriage returns; tokenize the text first")
    as_dict = io.StringIO("".join(f"{w} {c}\n" for w, c in counts.items()))
    # subword-nmt shows a progress bar unconditionally; keep it for terminals only (logs of cluster jobs stay clean)
    bar, _learn.tqdm = _learn.tqdm, functools.partial(tqdm, disable=not sys.stderr.isatty(), file=sys.stderr)
    try:
        with atomic_output(codes_out) as f:
            _learn.learn_bpe(as_dict, f, merges, min_frequency=min_frequency, is_dict=True)
    finally:
        _learn.tqdm = bar
    n = count_lines(codes_out) - 1  # minus the "#version" line
    log(f"bpe: learned {n} merges from {len(counts)} word types ({sum(counts.values())} tokens) -> {codes_out}")
    if n < merges:
        log(f"bpe: warning: only {n} of {merges} merges (no pair left with frequency >= {min_frequency})")
    return n


class BPE:
    """Applies a codes file to tokenized text; results are cached per word.

    With `vocab` (tokens of a vocabulary file), a piece that is not in it is split back into the two pieces its merge
    joined, recursively, until every piece is in the vocabulary or is a single character: fastBPE's
    `applybpe ... vocab` (fastBPE.hpp limitVocab/decompose), which the original uses for the HMR valid/test sets."""

    def __init__(self, codes_path: str | Path, vocab: set[str] | None = None):
        lines = Path(codes_path).read_text(encoding="utf-8").rstrip("\n").split("\n")
        self.version = (0, 1)
        if lines and lines[0].startswith("#version:"):
            self.version = tuple(int(x) for x in re.sub(r"(\.0+)*$", "", lines[0].split()[-1]).split("."))
            lines = lines[1:]
        if self.version not in ((0, 1), (0, 2)):
            raise InputError(f"{codes_path}: unsupported BPE codes version {self.version}")
        self.ranks: dict[tuple[str, str], int] = {}
        for i, line in enumerate(lines):
            pair = tuple(line.strip("\r\n ").split(" "))
            if len(pair) != 2:
                if i == 0 and line == "":  # codes file with no merges
                    break
                raise InputError(f"{codes_path}:{i + 1 + (self.version != (0, 1))}: expected 'left right', got {line!r}")
            self.ranks.setdefault(pair, i)  # a repeated merge keeps its first rank
        self.vocab = vocab
        self.unmerge = {left + right: (left, right) for left, right in self.ranks} if vocab is not None else {}
        self.cache: dict[str, tuple[str, ...]] = {}
        self._joined: dict[str, str] = {}  # word -> its pieces joined with "@@ "

    def segment_word(self, word: str) -> tuple[str, ...]:
        if (hit := self.cache.get(word)) is not None:
            return hit
        if len(word) == 1:
            return (word,)
        if self.version == (0, 1):
            syms = list(word) + [EOW]
        else:  # 0.2: the end-of-word mark is glued to the last character
            syms = list(word[:-1]) + [word[-1] + EOW]
        ranks = self.ranks
        while len(syms) > 1:
            best = min(
                ((ranks[p], p) for p in zip(syms, syms[1:]) if p in ranks), default=None, key=lambda rp: rp[0]
            )
            if best is None:
                break
            left, right = best[1]
            merged, i = [], 0
            while i < len(syms):  # merge every occurrence, left to right, never overlapping
                if i + 1 < len(syms) and syms[i] == left and syms[i + 1] == right:
                    merged.append(left + right)
                    i += 2
                else:
                    merged.append(syms[i])
                    i += 1
            syms = merged
        if self.vocab is not None:
            last = len(syms) - 1 - (syms[-1] == EOW)  # codes v0.1 may leave the end mark as a piece of its own
            syms = [p for i, s in enumerate(syms) for p in self._in_vocab(s, i >= last)]
        if syms[-1] == EOW:
            syms.pop()
        elif syms[-1].endswith(EOW):
            syms[-1] = syms[-1][: -len(EOW)]
        self.cache[word] = out = tuple(syms)
        return out

    def _in_vocab(self, piece: str, final: bool) -> list[str]:
        """`piece` if the vocabulary has it (as 'piece@@' inside a word, without the end mark at its end), else the
        pieces of its merge, each checked the same way; a piece no merge made stays as it is."""
        query = piece[: -len(EOW)] if final and piece.endswith(EOW) else piece + SEP
        if query in self.vocab or piece not in self.unmerge:
            return [piece]
        left, right = self.unmerge[piece]
        return self._in_vocab(left, False) + self._in_vocab(right, final)

    def apply_line(self, line: str) -> str:
        """Tokenized line -> BPE line (subword-nmt's apply_bpe output for a line without surrounding spaces)."""
        joined = self._joined
        out = []
        for word in line.strip("\r\n ").split(" "):
            if word:
                if (seg := joined.get(word)) is None:
                    joined[word] = seg = (SEP + " ").join(self.segment_word(word))
                out.append(seg)
        return " ".join(out)


def apply_file(codes: str | Path, inp: str | Path, out: str | Path, vocab: str | Path | None = None,
               log: Callable = eprint) -> int:
    """Apply `codes` to every line of `inp` (atomic write), restricted to the tokens of the `vocab` file if given;
    returns the number of lines."""
    from relm.text.vocab import read_vocab_lines

    bpe = BPE(codes, {tok for tok, _, _ in read_vocab_lines(vocab)} if vocab else None)
    n = 0
    with atomic_output(out) as f:
        for line in iter_lines(inp):
            f.write(bpe.apply_line(line) + "\n")
            n += 1
    log(f"bpe: applied {codes}{f' restricted to {vocab}' if vocab else ''} to {inp} -> {out} ({n} lines, "
        f"{len(bpe.cache)} word types)")
    return n


def convert_fastbpe_codes(inp: str | Path, out: str | Path, log: Callable = eprint) -> int:
    """fastBPE codes (`fast learnbpe`: one "left right count" line per merge, in merge order) -> the subword-nmt
    "#version: 0.2" codes that BPE reads (atomic write); returns the number of merges.

    The two formats mean the same merges: fastBPE (fastBPE.hpp: tokenize_str, process_bpe) splits a word into
    characters with "</w>" glued to the last one, which is subword-nmt's version 0.2 convention (0.1 makes "</w>" a
    symbol of its own, so the header matters), and applies the merge of lowest rank first, every occurrence left to
    right, as BPE.segment_word does. fastBPE (readCodes) refuses codes that repeat a merge or make the same piece
    twice; so does this conversion. InputError names the line of anything else than "left right count" (e.g.
    subword-nmt codes given by mistake)."""
    try:
        text = Path(inp).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{inp}: not UTF-8 ({e.reason} at byte {e.start}); not a codes file") from None
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n") if text.strip() else []
    if lines and lines[0].startswith("#version"):
        raise InputError(f"{inp}:1: {lines[0]!r} is a subword-nmt header, not fastBPE codes ('left right count' "
                         "lines); such codes are read as they are")
    pairs: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    made: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        fields = line.split(" ")
        if len(fields) != 3 or not all(fields):
            raise InputError(f"{inp}:{lineno}: expected fastBPE codes 'left right count', got {line!r}")
        left, right, count = fields
        if not count.isdigit():
            raise InputError(f"{inp}:{lineno}: count {count!r} is not a non-negative integer")
        if EOW in left or right == EOW or (EOW in right and not right.endswith(EOW)):
            raise InputError(f"{inp}:{lineno}: {line!r}: '{EOW}' may only end the right symbol of a merge (fastBPE "
                             "glues it to the last character of a word)")
        if (left, right) in seen:
            raise InputError(f"{inp}:{lineno}: merge {left!r} {right!r} repeats line {seen[left, right]}")
        if left + right in made:
            raise InputError(f"{inp}:{lineno}: merge {left!r} {right!r} makes {left + right!r}, as line "
                             f"{made[left + right]} does")
        seen[left, right] = made[left + right] = lineno
        pairs.append(f"{left} {right}\n")
    if not pairs:
        raise InputError(f"{inp}: no merges (empty codes file); {out} not written")
    with atomic_output(out) as f:
        f.write("#version: 0.2\n")
        f.writelines(pairs)
    log(f"bpe: converted {len(pairs)} fastBPE merges {inp} -> {out} (subword-nmt #version: 0.2)")
    return len(pairs)
