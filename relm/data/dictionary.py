"""Word <-> id mapping with XLM's layout: 14 special words (ids 0-13), then the vocab file's words in file order."""
from __future__ import annotations

from pathlib import Path

from relm.errors import InputError

from relm.tokens import N_SPECIAL, SPECIAL_WORDS, UNK


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
        repeated words); counts must not increase along the file."""
        words, counts = list(SPECIAL_WORDS), [0] * N_SPECIAL
        seen = set(words)
        prev = None
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if "\u2028" in line:
                    continue
                fields = line.rstrip().split()
                if len(fields) != 2 or fields[0] in seen:
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
