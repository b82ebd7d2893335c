"""Binarized corpora: token ids of all sentences in one flat array plus sentence offsets, memory-mapped when read.

Files for a corpus addressed by `P = {prefix}.json`: `{prefix}.tok.npy` (ids; uint16 when the dictionary has fewer
than 65536 words, else int32) holds EOS s0 EOS s1 EOS ... s(n-1) EOS, the sentences with an EOS before each and after
the last: the MLM stream of XLM's StreamDataset as it is, so that MLM batches are views of the memory map and UNMT
batches copy [EOS s EOS] rows (relm.data.batches). `{prefix}.off.npy` (int64, n+1 entries) holds the positions of
those EOS: sentence i is tok[off[i] + 1 : off[i + 1]]. The JSON with the metadata is written last, so that its
presence means a complete corpus. Both arrays are written while the text is read (memory does not grow with the
corpus). Corpora of the first layout (no EOS in the file; JSON without "format") are refused with a message to re-run
binarization. `open_corpora` opens the corpora of a training run and checks their language and dictionary.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from relm.data.dictionary import Dictionary
from relm.tokens import EOS, UNK
from relm.errors import InputError, eprint
from relm.files import atomic_output, sha256_file
from relm.text.tokenize import iter_lines


UNK_CHECK_TOKENS = 1_000_000  # binarize checks the share of unknown tokens this early (and at the end)
FORMAT = 2  # layout version in the JSON; 1 (no "format" key): sentences without EOS between them
FLUSH_TOKENS = 1 << 18  # binarize writes its buffers to disk every this many tokens
_NPY_HEADER = 128  # bytes: a fixed-size .npy v1.0 header, rewritten with the final shape when the array is complete


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
    unk: Counter = Counter()

    def check_unknowns(n_tok: int, what: str = "") -> None:
        n_unk = sum(unk.values())
        if max_unk_rate is not None and n_tok and n_unk > max_unk_rate * n_tok:
            top = ", ".join(w for w, _ in unk.most_common(5))
            raise InputError(f"{text_path}: {n_unk} of {what}{n_tok} tokens ({100 * n_unk / n_tok:.0f}%) are "
                             f"not in the vocabulary {vocab_path} (e.g. {top}), more than the limit "
                             f"{100 * max_unk_rate:g}%: wrong vocabulary, BPE codes or language?")

    new_dir = not tok_path.parent.exists()
    try:
        with atomic_output(tok_path, "wb") as ftok, atomic_output(off_path, "wb") as foff:
            n_sent, n_tok = _write_ids(text_path, dico, ftok, foff, unk, check_unknowns)
    except BaseException:
        if new_dir and tok_path.parent.is_dir() and not any(tok_path.parent.iterdir()):
            tok_path.parent.rmdir()  # nothing written: not even the directory
        raise
    meta = {
        "format": FORMAT,
        "n_sentences": n_sent,
        "n_tokens": n_tok,
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
    rate = 100 * n_unk / max(1, n_tok)
    log(f"binarize: {text_path} -> {out_json} ({n_sent} sentences, {n_tok} tokens, "
        f"{len(dico)} words, {n_unk} unknown = {rate:.2f}%)")
    if unk:
        log("binarize: most frequent unknown words: " + ", ".join(f"{w} ({c})" for w, c in unk.most_common(10)))
    return meta


def _write_ids(text_path, dico: Dictionary, ftok, foff, unk: Counter, check_unknowns: Callable) -> tuple[int, int]:
    """binarize's pass over the text: ids and offsets appended to the two open .npy files in pieces of FLUSH_TOKENS;
    unknown words counted in `unk`, checked after UNK_CHECK_TOKENS tokens and at the end. Returns (sentences, tokens)."""
    dtype = np.uint16 if len(dico) < 65536 else np.int32
    wtok, woff = _NpyWriter(ftok, dtype), _NpyWriter(foff, np.int64)
    toks, offs = [EOS], [0]  # lists, not arrays: list.extend is the fastest way to collect Python ints
    pos = n_sent = n_tok = 0  # pos: where the EOS after the last sentence is; n_tok: EOS not counted
    checked = False
    for line in iter_lines(text_path):
        ids = dico.encode(line)
        if UNK in ids:
            unk.update(w for w in line.split() if dico.index(w) == UNK)
        n_sent += 1
        n_tok += len(ids)
        ids.append(EOS)
        toks += ids
        pos += len(ids)
        offs.append(pos)  # the EOS after sentence i is the one before sentence i + 1
        if not checked and n_tok >= UNK_CHECK_TOKENS:
            check_unknowns(n_tok, "the first ")
            checked = True
        if len(toks) >= FLUSH_TOKENS:
            wtok.write(toks)
            woff.write(offs)
            toks, offs = [], []
    if not n_tok:
        raise InputError(f"{text_path} has no tokens ({n_sent} lines, all empty); nothing to binarize")
    check_unknowns(n_tok)
    wtok.write(toks)
    woff.write(offs)
    wtok.close()
    woff.close()
    return n_sent, n_tok


class _NpyWriter:
    """A 1-d .npy array written in pieces to an open binary file: a fixed-size header first (shape unknown yet), the
    data appended, the header rewritten with the final length by close()."""

    def __init__(self, f, dtype):
        self.f, self.dtype, self.n = f, np.dtype(dtype), 0
        f.write(self._header())

    def _header(self) -> bytes:
        d = f"{{'descr': {np.lib.format.dtype_to_descr(self.dtype)!r}, 'fortran_order': False, 'shape': ({self.n},), }}"
        body = d.encode("latin1").ljust(_NPY_HEADER - 10 - 1) + b"\n"
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body

    def write(self, values) -> None:
        a = np.asarray(values, dtype=self.dtype)
        self.f.write(a.tobytes())
        self.n += len(a)

    def close(self) -> None:
        self.f.seek(0)
        self.f.write(self._header())
        self.f.seek(0, 2)


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
        if self.meta.get("format", 1) != FORMAT:
            raise InputError(f"corpus {self.path} has layout {self.meta.get('format', 1)}, this relm reads layout "
                             f"{FORMAT} (EOS between sentences): re-run its binarization (Snakemake: --forcerun "
                             "binarize; or relm binarize)")
        try:
            self.tok = np.load(tok_path, mmap_mode="r")
            self.off = np.load(off_path, mmap_mode="r")
        except ValueError as e:
            raise InputError(f"corpus {self.path}: cannot read {tok_path} / {off_path}: {e}") from e
        n, n_tok = self.meta["n_sentences"], self.meta["n_tokens"]
        problems = []
        if self.off.ndim != 1 or len(self.off) != n + 1:
            problems.append(f"{off_path.name} has {len(self.off)} offsets, expected n_sentences + 1 = {n + 1}")
        if self.tok.ndim != 1 or len(self.tok) != n_tok + n + 1:
            problems.append(f"{tok_path.name} has {len(self.tok)} ids, expected n_tokens + n_sentences + 1 = "
                            f"{n_tok + n + 1}")
        if not problems and (self.off[0] != 0 or self.off[-1] != len(self.tok) - 1):
            problems.append(f"offsets run from {self.off[0]} to {self.off[-1]}, expected 0 to {len(self.tok) - 1}")
        if problems:
            raise InputError(f"corpus {self.path} is inconsistent: " + "; ".join(problems))
        self._lengths = None

    def __len__(self) -> int:
        return len(self.off) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sentence {i} out of range for {self.path} ({len(self)} sentences)")
        i %= len(self)
        return self.tok[self.off[i] + 1 : self.off[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        """Sentence lengths in tokens, computed once in pieces: uint16, or int32 if a sentence has 65535 tokens or
        more (10M sentences: 20 MB, where np.diff of the offsets would take 80)."""
        if self._lengths is None:
            n, step = len(self), 1 << 20
            out = np.empty(n, dtype=np.uint16)
            for a in range(0, n, step):
                d = np.diff(self.off[a: a + step + 1]) - 1
                if len(d) and d.max() > np.iinfo(out.dtype).max:
                    out = out.astype(np.int32)
                out[a: a + len(d)] = d
            self._lengths = out
        return self._lengths

    @property
    def n_tokens(self) -> int:
        return self.meta["n_tokens"]

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
