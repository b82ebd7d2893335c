"""Vocabulary files: counting (fastBPE `getvocab`) and RE-LM's vocabulary extension (relm's add_vocabs.py).

A vocab file has one `token count` line per token, sorted by count descending, then by the token's bytes ascending.
The extended vocabulary keeps every HMR line in place (so every HMR token keeps its id in the model) and appends the
LMR tokens the HMR vocab lacks; its file name carries their number N, which is how much the embeddings grow.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Callable

from relm.errors import InputError, eprint
from relm.tokens import N_SPECIAL
from relm.files import atomic_output, sha256_file


def count_vocab(inputs: list[str | Path], out: str | Path, log: Callable = eprint) -> int:
    """fastBPE getvocab over the concatenated inputs: every token, split on ' ' and '\\n' only; returns #tokens.

    InputError (and no output) for inputs without any token and for a token that is not UTF-8 (named by file and
    line): the dictionary could not read such a vocabulary.
    """
    counts: Counter = Counter()
    for path in inputs:
        with open(path, "rb") as f:  # bytes: tokens are counted and ordered exactly as the C++ tool does
            for line in f:
                counts.update(t for t in line.rstrip(b"\n").split(b" ") if t)
    if not counts:
        raise InputError(f"no tokens in {', '.join(map(str, inputs))} (empty or blank lines only); {out} not written")
    for tok in counts:
        try:
            tok.decode("utf-8")
        except UnicodeDecodeError:
            from relm.text.tokenize import iter_lines  # only here: it loads the Moses tools

            for path in inputs:
                try:
                    for _ in iter_lines(path):
                        pass
                except InputError as e:
                    raise InputError(f"{e}; {out} not written") from None
            raise InputError(f"token {tok!r} in {', '.join(map(str, inputs))} is not UTF-8; {out} not written") from None
    with atomic_output(out, "wb") as f:
        for tok, n in sorted(counts.items(), key=lambda tc: (-tc[1], tc[0])):
            f.write(tok + b" %d\n" % n)
    log(f"vocab: {len(counts)} tokens ({sum(counts.values())} running) from {len(inputs)} file(s) -> {out}")
    return len(counts)


def read_vocab_lines(path: str | Path) -> list[tuple[str, int, str]]:
    """(token, count, line) for each line with exactly two whitespace fields, the lines add_vocabs.py uses."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) != 2:
                continue
            try:
                rows.append((fields[0], int(fields[1]), line.rstrip("\n")))
            except ValueError:
                raise InputError(f"{path}:{lineno}: count {fields[1]!r} is not an integer") from None
    return rows


def _check_tokens(rows: list[tuple[str, int, str]], path: str | Path) -> None:
    seen = set()
    for tok, _, line in rows:
        if tok in seen:
            raise InputError(f"{path}: token {tok!r} occurs twice (not a getvocab file?)")
        if "\u2028" in line:  # the dictionary reader skips such lines, which would shift every later id
            raise InputError(f"{path}: token {tok!r} contains U+2028, which the dictionary cannot hold")
        seen.add(tok)


def extend_vocab(
    hmr_vocab: str | Path, lmr_vocab: str | Path, out_dir: str | Path, lmr: str, hmr: str, log: Callable = eprint
) -> dict:
    """RE-LM vocabulary extension; writes `vocab.{lmr}-{hmr}-ext-by-{N}` and its sidecar JSON, returns the sidecar.

    HMR lines keep their order with counts raised by the count of the most frequent new token (keeps the count
    column non-increasing); then every LMR token missing from the HMR vocab, in LMR order, with its LMR count.
    """
    hmr_rows, lmr_rows = read_vocab_lines(hmr_vocab), read_vocab_lines(lmr_vocab)
    _check_tokens(hmr_rows, hmr_vocab)
    _check_tokens(lmr_rows, lmr_vocab)
    known = {tok for tok, _, _ in hmr_rows}
    new = [(tok, cnt, line) for tok, cnt, line in lmr_rows if tok not in known]
    bump = new[0][1] if new else 0
    out_dir = Path(out_dir)
    name = f"vocab.{lmr}-{hmr}-ext-by-{len(new)}"
    ext_path = out_dir / name
    with atomic_output(ext_path) as f:
        f.writelines(f"{tok} {cnt + bump}\n" for tok, cnt, _ in hmr_rows)
        f.writelines(line + "\n" for _, _, line in new)
    stale = re.compile(re.escape(f"vocab.{lmr}-{hmr}-ext-by-") + r"\d+")
    for old in out_dir.glob(f"vocab.{lmr}-{hmr}-ext-by-*"):
        if old.name != name and stale.fullmatch(old.name):
            old.unlink()
            log(f"vocab: removed stale {old}")
    side = {
        "n_new": len(new),
        "ext_vocab": str(ext_path),
        "hmr_vocab": str(hmr_vocab),
        "lmr_vocab": str(lmr_vocab),
        "hmr_tokens": len(hmr_rows),
        "lmr_tokens": len(lmr_rows),
        "ext_tokens": len(hmr_rows) + len(new),
        "n_words_hmr": N_SPECIAL + len(hmr_rows),
        "n_words_ext": N_SPECIAL + len(hmr_rows) + len(new),
        "hmr_vocab_sha256": sha256_file(hmr_vocab),
        "lmr_vocab_sha256": sha256_file(lmr_vocab),
    }
    with atomic_output(out_dir / f"vocab.{lmr}-{hmr}-ext.json") as f:
        f.write(json.dumps(side, indent=2) + "\n")
    shared = len(lmr_rows) - len(new)
    log(f"vocab: {hmr} {len(hmr_rows)} + {lmr} {len(lmr_rows)} tokens ({shared} shared) -> {len(new)} new -> {ext_path}")
    return side
