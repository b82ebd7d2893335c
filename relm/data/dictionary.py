"""Word <-> id mapping with XLM's layout: 14 special words (ids 0-13), then the vocab file's words in file order."""
from __future__ import annotations

from pathlib import Path

from relm.errors import InputError

from relm.tokens import N_SPECIAL, SPECIAL_WORDS, UNK

MAX_MALFORMED_LINES = 10  # lines of a vocab file that may lack the `token count` shape (XLM skips them) ...
MAX_MALFORMED_SHARE = 0.01  # ... or this share of its lines, whichever is more


def _vocab_lines(path: str | Path):
    """(line number, line) of a UTF-8 file, lines split as Python's text mode (and XLM) does: "\\n", "\\r\\n", "\\r"."""
    lineno = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{lineno + 1}: invalid UTF-8 (bytes {raw[e.start:e.start + 4]!r}); not a "
                                 "vocabulary file") from None
            pieces = text.replace("\r\n", "\n").split("\r")
            for line in pieces[:-1] if pieces[-1] == "" else pieces:
                lineno += 1
                yield lineno, line


class Dictionary:
    """Ids in `words` order; `counts[i]` is the corpus count of word i (0 for the specials)."""

    def __init__(self, words: list[str], counts: list[int], source: str = "<memory>"):
        if list(words[:N_SPECIAL]) != SPECIAL_WORDS:
            raise InputError(f"dictionary {source}: the first {N_SPECIAL} words must be XLM's special words")
        if len(words) != len(counts):
            raise InputError(f"dictionary {source}: {len(words)} words but {len(counts)} counts")
        self.words = list(words)
        self.counts = [int(c) for c in counts]
        self.word2id = {w: i for i, w in enumerate(self.words)}
        if len(self.word2id) != len(self.words):
            raise InputError(f"dictionary {source}: duplicate words")
        self.source = source

    @classmethod
    def from_words(cls, words: list[str], counts: list[int] | None = None) -> "Dictionary":
        """From an id2word list that includes the specials (as stored in checkpoints)."""
        return cls(words, counts if counts is not None else [0] * len(words))

    @classmethod
    def from_tokens(cls, tokens: list[str], counts: list[int] | None = None) -> "Dictionary":
        """From vocabulary tokens only (the specials are put in front)."""
        counts = counts if counts is not None else [0] * len(tokens)
        return cls(SPECIAL_WORDS + list(tokens), [0] * N_SPECIAL + list(counts))

    @classmethod
    def read_vocab(cls, path: str | Path) -> "Dictionary":
        """Read a `token count` vocab file as XLM does (skipped: lines with U+2028, lines without exactly two fields,
        repeated words); counts must be integers that do not increase along the file.

        A file that is not a vocabulary is an InputError naming its first bad line: one with no `token count` line
        at all, or with more lines of another shape than XLM's skipping explains (MAX_MALFORMED_LINES or
        MAX_MALFORMED_SHARE of the lines, whichever is more; a real vocabulary has a few at most, from tokens that
        hold Unicode spaces), or one that is not UTF-8.
        """
        words, counts = list(SPECIAL_WORDS), [0] * N_SPECIAL
        seen = set(words)
        prev = None
        n_lines, malformed, first_bad = 0, 0, None
        for lineno, line in _vocab_lines(path):
            if not line.strip():
                continue
            n_lines += 1
            if "\u2028" in line:
                continue
            fields = line.rstrip().split()
            if len(fields) != 2:
                malformed += 1
                first_bad = first_bad or (lineno, len(fields))
                continue
            if fields[0] in seen:
                continue
            try:
                count = int(fields[1])
            except ValueError:
                raise InputError(f"{path}:{lineno}: count {fields[1]!r} is not an integer") from None
            if prev is not None and count > prev:
                raise InputError(f"{path}:{lineno}: count {count} of {fields[0]!r} is larger than the previous "
                                 f"count {prev}; a vocab file must be sorted by count, descending")
            prev = count
            seen.add(fields[0])
            words.append(fields[0])
            counts.append(count)
        if malformed > max(MAX_MALFORMED_LINES, MAX_MALFORMED_SHARE * n_lines) or len(words) == N_SPECIAL:
            where = f"{path}:{first_bad[0]}: {first_bad[1]} fields instead of 'token count'" if first_bad else \
                f"{path}: no 'token count' lines"
            raise InputError(f"{where}; {malformed} of {n_lines} lines are not 'token count' lines: not a "
                             "vocabulary file")
        return cls(words, counts, source=str(path))

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other) -> bool:
        return isinstance(other, Dictionary) and self.words == other.words

    def __getitem__(self, i: int) -> str:
        return self.words[i]

    def __contains__(self, word: str) -> bool:
        return word in self.word2id

    def index(self, word: str) -> int:
        return self.word2id.get(word, UNK)

    def encode(self, line: str) -> list[int]:
        """Whitespace-split words -> ids; unknown words -> UNK; special words other than <unk> are dropped."""
        ids = []
        for w in line.split():
            i = self.word2id.get(w, UNK)
            if i < N_SPECIAL and i != UNK:
                continue
            ids.append(i)
        return ids

    def decode(self, ids) -> str:
        return " ".join(self.words[int(i)] for i in ids)

    def is_prefix_of(self, other: "Dictionary") -> bool:
        return len(self) <= len(other) and other.words[: len(self)] == self.words

    def check_prefix_of(self, other: "Dictionary") -> None:
        """Raise unless every id of this dictionary means the same word in `other` (e.g. HMR vocab vs extended)."""
        if len(self) > len(other):
            raise InputError(f"dictionary {self.source} ({len(self)} words) is larger than {other.source} "
                             f"({len(other)} words), so it cannot be its prefix")
        for i, (a, b) in enumerate(zip(self.words, other.words)):
            if a != b:
                raise InputError(f"dictionary {self.source} is not a prefix of {other.source}: id {i} is {a!r} "
                                 f"in the first and {b!r} in the second")
