"""Binarized corpora: token ids of all sentences in one flat array plus sentence offsets, memory-mapped when read.

Files for a corpus addressed by `P = {prefix}.json`: `{prefix}.tok.npy` (ids, no EOS between sentences; uint16 when
the dictionary has fewer than 65536 words, else int32), `{prefix}.off.npy` (int64, n+1 offsets: sentence i is
tok[off[i]:off[i+1]]) and the JSON with the metadata, written last so that its presence means a complete corpus.
`open_corpora` opens the corpora of a training run and checks their language and dictionary.
"""
from __future__ import annotations

import json
from array import array
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from relm.data.dictionary import Dictionary
from relm.tokens import UNK
from relm.errors import InputError, eprint
from relm.files import atomic_output, sha256_file
from relm.text.tokenize import iter_lines


UNK_CHECK_TOKENS = 1_000_000  # binarize checks the share of unknown tokens this early (and at the end)


def sibling_paths(json_path: str | Path) -> tuple[Path, Path]:
    json_path = Path(json_path)
    if json_path.suffix != ".json":
        raise InputError(f"corpus path {json_path} must end in .json")
    prefix = str(json_path)[: -len(".json")]
    return Path(prefix + ".tok.npy"), Path(prefix + ".off.npy")


def binarize(
    text_path: str | Path,
    vocab_path: str | Path,
    out_json: str | Path,
    lang: str,
    log: Callable = eprint,
    max_unk_rate: float | None = None,
) -> dict:
    """Encode a (BPE) text file with the dictionary of `vocab_path`; returns the metadata written to `out_json`.

    InputError, and nothing written, for a text without tokens and, when `max_unk_rate` is set (the CLI sets 0.5),
    for a text whose share of unknown tokens exceeds it: a corpus binarized with its own vocabulary has none, valid and
    test sets under a vocabulary learned on the training data a few percent at most, so most tokens unknown means the
    wrong vocabulary (or the wrong BPE codes, or the wrong language). The check runs after the first
    UNK_CHECK_TOKENS tokens already (no need to read a whole corpus to find that out) and again at the end.
    """
    dico = Dictionary.read_vocab(vocab_path)
    tok_path, off_path = sibling_paths(out_json)
    dtype = np.uint16 if len(dico) < 65536 else np.int32
    toks = array("H" if dtype == np.uint16 else "i")
    offs = array("q", [0])
    unk: Counter = Counter()

    def check_unknowns(what: str) -> None:
        n_unk = sum(unk.values())
        if max_unk_rate is not None and len(toks) and n_unk > max_unk_rate * len(toks):
            top = ", ".join(w for w, _ in unk.most_common(5))
            raise InputError(f"{text_path}: {n_unk} of {what}{len(toks)} tokens ({100 * n_unk / len(toks):.0f}%) are "
                             f"not in the vocabulary {vocab_path} (e.g. {top}), more than the limit "
                             f"{100 * max_unk_rate:g}%: wrong vocabulary, BPE codes or language?")

    checked = False
    for line in iter_lines(text_path):
        ids = dico.encode(line)
        toks.extend(ids)
        offs.append(len(toks))
        if UNK in ids:
            unk.update(w for w in line.split() if dico.index(w) == UNK)
        if not checked and len(toks) >= UNK_CHECK_TOKENS:
            check_unknowns("the first ")
            checked = True
    if not len(toks):
        raise InputError(f"{text_path} has no tokens ({len(offs) - 1} lines, all empty); nothing to binarize")
    check_unknowns("")
    tok = np.frombuffer(toks, dtype=dtype)
    off = np.frombuffer(offs, dtype=np.int64)
    for path, arr in ((tok_path, tok), (off_path, off)):
        with atomic_output(path, "wb") as f:
            np.save(f, arr)
    meta = {
        "n_sentences": len(off) - 1,
        "n_tokens": len(tok),
        "n_unk": sum(unk.values()),
        "lang": lang,
        "text": str(text_path),
        "vocab": str(vocab_path),
        "vocab_sha256": sha256_file(vocab_path),
        "n_words": len(dico),
    }
    with atomic_output(out_json) as f:
        f.write(json.dumps(meta, indent=2) + "\n")
    n_unk = meta["n_unk"]
    rate = 100 * n_unk / max(1, len(tok))
    log(f"binarize: {text_path} -> {out_json} ({meta['n_sentences']} sentences, {meta['n_tokens']} tokens, "
        f"{len(dico)} words, {n_unk} unknown = {rate:.2f}%)")
    if unk:
        log("binarize: most frequent unknown words: " + ", ".join(f"{w} ({c})" for w, c in unk.most_common(10)))
    return meta


class Corpus:
    """Read-only view of a binarized corpus; the arrays are memory-mapped, so opening costs no RAM."""

    def __init__(self, json_path: str | Path):
        self.path = Path(json_path)
        tok_path, off_path = sibling_paths(self.path)
        if not self.path.is_file():
            raise InputError(f"corpus {self.path} does not exist")
        for p in (tok_path, off_path):
            if not p.is_file():
                raise InputError(f"corpus {self.path}: file {p} is missing (re-run binarization)")
        self.meta = json.loads(self.path.read_text(encoding="utf-8"))
        try:
            self.tok = np.load(tok_path, mmap_mode="r")
            self.off = np.load(off_path, mmap_mode="r")
        except ValueError as e:
            raise InputError(f"corpus {self.path}: cannot read {tok_path} / {off_path}: {e}") from e
        n, n_tok = self.meta["n_sentences"], self.meta["n_tokens"]
        problems = []
        if self.off.ndim != 1 or len(self.off) != n + 1:
            problems.append(f"{off_path.name} has {len(self.off)} offsets, expected n_sentences + 1 = {n + 1}")
        if self.tok.ndim != 1 or len(self.tok) != n_tok:
            problems.append(f"{tok_path.name} has {len(self.tok)} tokens, expected n_tokens = {n_tok}")
        if not problems and len(self.off) and (self.off[0] != 0 or self.off[-1] != len(self.tok)):
            problems.append(f"offsets run from {self.off[0]} to {self.off[-1]}, expected 0 to {len(self.tok)}")
        if problems:
            raise InputError(f"corpus {self.path} is inconsistent: " + "; ".join(problems))
        self._lengths = None

    def __len__(self) -> int:
        return len(self.off) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sentence {i} out of range for {self.path} ({len(self)} sentences)")
        i %= len(self)
        return self.tok[self.off[i] : self.off[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        """Sentence lengths in tokens (int64, computed once)."""
        if self._lengths is None:
            self._lengths = np.diff(self.off)
        return self._lengths

    @property
    def n_words(self) -> int:
        return self.meta["n_words"]

    @property
    def lang(self) -> str:
        return self.meta["lang"]


def open_corpora(paths: dict[str, str], dico: Dictionary, vocab: str, what: str) -> dict[str, Corpus]:
    """Corpus objects for {lang: json} of a training run; each must be binarized with the run's dictionary `dico`
    (read from `vocab`) or a prefix of it (RE-LM: the HMR corpus keeps the HMR dictionary, whose ids mean the same in
    the extended one). `what` (train, valid, test) names the corpora in errors."""
    sha = sha256_file(vocab)
    out = {}
    for lang, path in sorted(paths.items()):
        c = Corpus(path)
        if c.meta.get("lang") not in (None, lang):
            raise InputError(f"{what} corpus {path} is language {c.meta['lang']!r}, given as {lang!r}")
        if c.meta.get("vocab_sha256") != sha:
            src = c.meta.get("vocab")
            if not src or not Path(src).is_file():
                raise InputError(f"{what} corpus {path} was binarized with the vocabulary {src!r}, which differs "
                                 f"from {vocab} and cannot be read to check that it is a prefix of it")
            Dictionary.read_vocab(src).check_prefix_of(dico)
        if c.meta.get("n_words", 0) > len(dico):
            raise InputError(f"{what} corpus {path} has {c.meta['n_words']} words, the model's dictionary {len(dico)}")
        out[lang] = c
    return out
