"""BPE: learn codes (subword-nmt's algorithm, our faster merge loop), apply them with our own cached applier (same
output as subword-nmt's apply_bpe), both optionally over a process pool.

RE-LM used fastBPE; subword-nmt implements the same algorithm (codes file: optional "#version: 0.2" line, then one
"left right" merge per line, in merge order). Segmented words are joined with "@@ " as in both tools. Codes written
by fastBPE (a released model's) are read after `convert_fastbpe_codes`.

Learning = counting words (`count_words`, parallel over byte ranges of the inputs) + the merge loop (`learn_merges`,
which writes the same merges as subword-nmt's learn_bpe in a fraction of the time, see its docstring).
"""
from __future__ import annotations

import heapq
import itertools
import os
import re
import sys
from collections import Counter
from multiprocessing import Pool
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from relm.errors import InputError, eprint
from relm.files import CHUNK, atomic_output
from relm.text.tokenize import BOM, iter_lines

SEP = "@@"
EOW = "</w>"
_UNRANKED = 1 << 62
_NO_RANK = itertools.repeat(_UNRANKED)  # the default of ranks.get in BPE.segment_word (map over two iterables)
MIN_RANGE_BYTES, MAX_RANGE_BYTES = 1 << 20, 64 << 20  # size bounds of a counting task's part of a file
_WHITESPACE = re.compile(r"\s")


def _work_ranges(path: str | Path, step: int) -> list[tuple[int, int]]:
    """Byte ranges [start, end) covering the file, each of about `step` bytes and ending just after a b"\\n" (or at
    the end of the file): a line and character boundary in UTF-8, also with "\\r\\n" line ends."""
    size = os.path.getsize(path)
    ranges, start = [], 0
    with open(path, "rb") as f:
        while start < size:
            f.seek(min(start + max(step, 1), size))
            f.readline()
            end = min(f.tell(), size)
            ranges.append((start, end))
            start = end
    return ranges


def _count_range(job: tuple[str, int, int]) -> Counter | None:
    """Word counts of bytes [start, end) of a file, in order of first occurrence; None if they are not UTF-8.

    Reads blocks cut after their last b"\\n". Line ends ("\\n", "\\r\\n" and a bare "\\r", as iter_lines reads them)
    and spaces both separate words, so a block is counted with one split."""
    path, start, end = job
    counts: Counter = Counter()
    rest, left, at_start = b"", end - start, start == 0
    with open(path, "rb") as f:
        f.seek(start)
        while left > 0 and (block := f.read(min(4 * CHUNK, left))):
            left -= len(block)
            block = rest + block
            cut = block.rfind(b"\n") + 1 if left > 0 else len(block)
            block, rest = block[:cut], block[cut:]
            try:
                text = block.decode("utf-8")
            except UnicodeDecodeError:
                return None
            if at_start and text:
                text, at_start = text.removeprefix(BOM), False
            counts.update(text.replace("\r", " ").replace("\n", " ").split(" "))
    counts.pop("", None)
    return counts


def count_words(inputs: list[str | Path], workers: int = 1) -> Counter:
    """Word counts over the concatenated inputs (tokens split on single spaces, line by line as iter_lines reads
    them), in order of first occurrence. workers > 1 counts byte ranges in a process pool and adds the counters up in
    file order, which keeps that order; workers <= 0 uses every core."""
    workers = workers if workers > 0 else os.cpu_count() or 1
    jobs: list[tuple[str, int, int]] = []
    for path in inputs:
        size = os.path.getsize(path)
        step = size if workers == 1 else max(MIN_RANGE_BYTES, min(MAX_RANGE_BYTES, size // (4 * workers)))
        jobs += [(str(path), start, end) for start, end in _work_ranges(path, step)]
    total: Counter = Counter()
    pool = Pool(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        for (path, _, _), counts in zip(jobs, pool.imap(_count_range, jobs) if pool else map(_count_range, jobs)):
            if counts is None:
                for _ in iter_lines(path):  # raises InputError naming the line with bad UTF-8
                    pass
            if total:
                total.update(counts)  # words new to `total` go to its end: first occurrences stay in order
            else:
                total = counts
    finally:
        if pool:
            pool.terminate()
    return total


def learn_codes(inputs: list[str | Path], codes_out: str | Path, merges: int, min_frequency: int = 2,
                log: Callable = eprint, workers: int = 1) -> int:
    """Learn `merges` BPE merges jointly on all `inputs` (tokenized text); returns the number of merges written.

    Equals `cat inputs | subword-nmt learn-bpe -s merges --min-frequency min_frequency` (see learn_merges). workers:
    processes for counting words (<= 0: every core); the merge loop runs in this process."""
    counts = count_words(inputs, workers)
    pairs = learn_merges(counts, merges, min_frequency)
    with atomic_output(codes_out) as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{left} {right}\n" for left, right in pairs)
    log(f"bpe: learned {len(pairs)} merges from {len(counts)} word types ({sum(counts.values())} tokens) -> {codes_out}")
    if len(pairs) < merges:
        log(f"bpe: warning: only {len(pairs)} of {merges} merges (no pair left with frequency >= {min_frequency})")
    return len(pairs)


def learn_merges(counts: dict[str, int], merges: int, min_frequency: int = 2) -> list[tuple[str, str]]:
    """The merges subword-nmt's learn_bpe (learn_bpe.py, 0.3.8) learns from these word counts, in order.

    Same algorithm and bookkeeping, so the same merges, ties and oddities included: each step merges the pair of
    highest count, ties going to the greatest pair in Python's string order (`max(stats, key=(count, pair))`);
    pair counts are kept up to date incrementally (update_pair_statistics: the same steps, so the same counts also
    where they are not a recount), with subword-nmt's pruning of rare pairs into `big` and its threshold schedule
    (prune_stats; a pruned pair is only seen again when the best pair falls below the threshold). Only the data
    structures differ: the best pair comes from a heap of the counts >= threshold (stale entries skipped) instead of
    a scan of all pairs per merge, and merging a pair within a word scans the symbol tuple instead of running a
    regular expression (kept for the rare words with whitespace other than spaces, where subword-nmt's regex can
    match inside a symbol). Stops early when no pair reaches min_frequency.

    The order of `counts` does not change the merges (counts are sums; ties go by the pair), but words are indexed
    in subword-nmt's order anyway: by count, descending, equal counts in the order of `counts`."""
    by_count = sorted(((w, c) for w, c in counts.items() if w), key=lambda wc: wc[1], reverse=True)  # stable
    words = [tuple(w[:-1]) + (w[-1] + EOW,) for w, _ in by_count]
    freqs = [c for _, c in by_count]
    odd = {j for j, (w, _) in enumerate(by_count) if _WHITESPACE.search(w)}
    del by_count
    stats: dict[tuple[str, str], int] = {}
    indices: dict[tuple[str, str], dict[int, int]] = {}  # pair -> {word index: occurrences}, as subword-nmt's
    for j, word in enumerate(words):
        f = freqs[j]
        for p in itertools.pairwise(word):
            stats[p] = stats.get(p, 0) + f
            ix = indices.get(p)
            if ix is None:
                indices[p] = ix = {}
            ix[j] = ix.get(j, 0) + 1
    if not stats:
        return []
    big = dict(stats)  # subword-nmt's big_stats: the counts of pruned pairs
    threshold = max(stats.values()) / 10

    inverse: dict[str, tuple[int, ...]] = {}

    def key(p: tuple[str, str], v: int) -> tuple:
        """Heap entry: smallest = highest count, then greatest pair (strings compared through inverted code points;
        the end mark 0x110000 makes a prefix sort after its extensions)."""
        ks = []
        for s in p:
            k = inverse.get(s)
            if k is None:
                inverse[s] = k = tuple(0x10FFFF - ord(c) for c in s) + (0x110000,)
            ks.append(k)
        return (-v, ks[0], ks[1], p)

    def rebuild() -> list:
        heap = [key(p, v) for p, v in stats.items() if v >= threshold]
        heapq.heapify(heap)
        return heap

    def prune() -> None:  # subword-nmt's prune_stats
        for p, v in list(stats.items()):
            if v < threshold:
                del stats[p]
                big[p] = big.get(p, 0) + v if v < 0 else v

    heap = rebuild()
    out: list[tuple[str, str]] = []
    bar = tqdm(total=merges, desc="bpe learn", file=sys.stderr, disable=not sys.stderr.isatty())
    for i in range(merges):
        while heap and stats.get(heap[0][3]) != -heap[0][0]:  # skip stale entries
            heapq.heappop(heap)
        if not heap:  # no pair left >= threshold: back to all counts, as subword-nmt does
            prune()
            stats = dict(big)
            if not stats:
                break
            best = max(stats, key=lambda x: (stats[x], x))
            threshold = stats[best] * i / (i + 10000.0)
            prune()
            heap = rebuild()
        else:
            best = heap[0][3]
        if stats[best] < min_frequency:
            break
        out.append(best)
        touched = _merge_pair(best, words, freqs, stats, indices, odd)
        stats[best] = 0
        for p in touched:
            if (v := stats[p]) >= threshold:
                heapq.heappush(heap, key(p, v))
        if not i % 100:
            prune()
            heap = rebuild()
        bar.update()
    bar.close()
    return out


def _merge_pair(pair: tuple[str, str], words: list[tuple[str, ...]], freqs: list[int], stats: dict,
                indices: dict, odd: set[int]) -> set[tuple[str, str]]:
    """Merge `pair` in every word its index lists, updating stats and indices as subword-nmt's replace_pair and
    update_pair_statistics do; returns the pairs whose counts changed."""
    first, second = pair
    new = first + second
    touched: set[tuple[str, str]] = set()

    for j, n in list(indices.pop(pair, {}).items()):
        if n < 1:
            continue
        old = words[j]
        if j in odd:
            pattern = re.compile(r"(?<!\S)" + re.escape(first + " " + second) + r"(?!\S)")
            word = tuple(pattern.sub(new.replace("\\", "\\\\"), " ".join(old)).split(" "))
        else:
            word = _merge_in(old, first, second, new)
        words[j] = word
        f = freqs[j]
        # update_pair_statistics, line by line: the pairs around each occurrence of the pair in the old word lose
        # this word, then the pairs around each occurrence of the new symbol in the new word gain it
        lost, gained = [], []
        last = len(old) - 1
        i = 0
        while True:
            try:
                i = old.index(first, i)
            except ValueError:
                break
            if i < last and old[i + 1] == second:
                if i:
                    lost.append(old[i - 1:i + 1])
                if i < last - 1 and (old[i + 2] != first or i >= last - 2 or old[i + 3] != second):
                    lost.append(old[i + 1:i + 3])
                i += 2
            else:
                i += 1
        last = len(word) - 1
        i = 0
        while True:
            try:
                i = word.index(new, i)
            except ValueError:
                break
            if i:
                gained.append(word[i - 1:i + 1])
            if i < last and word[i + 1] != new:
                gained.append(word[i:i + 2])
            i += 1
        for pairs, df, dn in ((lost, -f, -1), (gained, f, 1)):
            for p in pairs:
                stats[p] = stats.get(p, 0) + df
                ix = indices.get(p)
                if ix is None:
                    indices[p] = ix = {}
                if c := ix.get(j, 0) + dn:
                    ix[j] = c
                else:
                    del ix[j]
            touched.update(pairs)
    return touched


def _merge_in(word: tuple[str, ...], first: str, second: str, new: str) -> tuple[str, ...]:
    """`word` with every occurrence of the symbols (first, second) replaced by `new`, left to right, not
    overlapping."""
    out: list[str] = []
    i, n = 0, len(word)
    while True:
        try:
            k = word.index(first, i)
        except ValueError:
            break
        if k + 1 < n and word[k + 1] == second:
            out.extend(word[i:k])
            out.append(new)
            i = k + 2
        else:
            out.extend(word[i:k + 1])
            i = k + 1
    out.extend(word[i:])
    return tuple(out)


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
        self._pairs = {rank: pair for pair, rank in self.ranks.items()}
        self.vocab = vocab
        self.unmerge = {left + right: (left, right) for left, right in self.ranks} if vocab is not None else {}
        self.cache: dict[str, tuple[str, ...]] = {}
        self._joined = _Joined(self)  # word -> its pieces joined with "@@ "

    def segment_word(self, word: str) -> tuple[str, ...]:
        if (hit := self.cache.get(word)) is not None:
            return hit
        if len(word) == 1:
            return (word,)
        if self.version == (0, 1):
            syms = list(word) + [EOW]
        else:  # 0.2: the end-of-word mark is glued to the last character
            syms = list(word[:-1]) + [word[-1] + EOW]
        rank_of, pairs = self.ranks.get, self._pairs
        while len(syms) > 1:
            best = min(map(rank_of, itertools.pairwise(syms), _NO_RANK))  # the lowest rank of the word's pairs
            if best == _UNRANKED:
                break
            left, right = pairs[best]
            new, i = left + right, 0
            while i < len(syms) - 1:  # merge every occurrence, left to right, never overlapping
                if syms[i] == left and syms[i + 1] == right:
                    syms[i:i + 2] = (new,)
                i += 1
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
        return " ".join(map(self._joined.__getitem__, filter(None, line.strip("\r\n ").split(" "))))


class _Joined(dict):
    """word -> its BPE pieces joined with "@@ ", computed on first use (map() over __getitem__ keeps hits in C)."""

    def __init__(self, bpe: BPE):
        super().__init__()
        self.bpe = bpe

    def __missing__(self, word: str) -> str:
        self[word] = seg = (SEP + " ").join(self.bpe.segment_word(word))
        return seg


_worker_bpe: BPE | None = None  # the BPE of a pool process (apply_file), with its own cache


def _init_worker(codes: str, vocab: set[str] | None) -> None:
    global _worker_bpe
    _worker_bpe = BPE(codes, vocab)


def _apply_range(job: tuple[str, int, int], bpe: BPE | None = None) -> tuple[str | None, int]:
    """BPE of the lines in bytes [start, end) of a file (line ends as iter_lines reads them), each followed by
    "\\n", as one string, and their number; (None, 0) if the bytes are not UTF-8."""
    path, start, end = job
    bpe = bpe or _worker_bpe
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, 0
    if start == 0:
        text = text.removeprefix(BOM)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":  # the range ends with a line end
        lines.pop()
    return "".join([bpe.apply_line(line) + "\n" for line in lines]), len(lines)


def apply_file(codes: str | Path, inp: str | Path, out: str | Path, vocab: str | Path | None = None,
               log: Callable = eprint, workers: int = 1, chunk_bytes: int = 1 << 20) -> int:
    """Apply `codes` to every line of `inp` (atomic write), restricted to the tokens of the `vocab` file if given;
    returns the number of lines.

    The input is read in parts of about `chunk_bytes` bytes, cut at line ends; workers > 1 (<= 0: every core)
    segments them in a process pool, each process with its own word cache, and the parts are written in input order:
    the output is the same as with one process."""
    from relm.text.vocab import read_vocab_lines

    workers = workers if workers > 0 else os.cpu_count() or 1
    vocab_set = {tok for tok, _, _ in read_vocab_lines(vocab)} if vocab else None
    bpe = BPE(codes, vocab_set)  # also checks the codes before a pool starts
    jobs = iter([(str(inp), start, end) for start, end in _work_ranges(inp, chunk_bytes)])
    n = 0
    with atomic_output(out) as f:
        pool = Pool(workers, _init_worker, (str(codes), vocab_set)) if workers > 1 else None
        try:
            while window := list(itertools.islice(jobs, 8 * workers)):  # bounded memory on huge inputs
                for text, lines in pool.imap(_apply_range, window) if pool else (_apply_range(j, bpe) for j in window):
                    if text is None:
                        for _ in iter_lines(inp):  # raises InputError naming the line with bad UTF-8
                            pass
                    f.write(text)
                    n += lines
        finally:
            if pool:
                pool.terminate()
    log(f"bpe: applied {codes}{f' restricted to {vocab}' if vocab else ''} to {inp} -> {out} ({n} lines, "
        f"{workers} process(es))")
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
