"""Binarized corpora: writing them and batching from them (relm.data.corpus, relm.data.batches).

binarize: `relm binarize` of generated text (streamed to disk in pieces) against the in-memory way (XLM's
preprocess.py, and relm before the streaming layout: encode every line into one array, then save it); same files.
mlm_batches: open a corpus and draw 1,000 MLM batches (32 x 256, shuffled) with StreamBatches, against np.load with
mmap_mode="r" and 1,000 contiguous slices of the same size (no stream layout, no shuffling: the floor).
unmt_batches: open a corpus and draw 1,000 UNMT batches (2,000 tokens, max_len 100) with SentenceBatches (a pass:
seeded permutation, length sort, cut, shuffled batch order), against np.load mmap and 1,000 batches of random
sentences padded by a Python loop (no pass to compute: the floor).

sample: `relm fetch` of a local corpus keeping a deterministic sample of a tenth of its lines (keys per line, computed
a block at a time), against a numpy mask (Generator.choice of the line numbers, one flag per line) and a pass that
writes the flagged lines.

The corpora of the batching cases are generated as binarized files directly (ids uniform over 30,000 words, Poisson
lengths of mean 20): 1M and 10M sentences.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bench.harness import project_linear, zipf_sample
from relm.data.corpus import FORMAT, Corpus, _NpyWriter, binarize, sibling_paths
from relm.tokens import BOS, EOS, PAD

SIZES = {
    "small": {"lines": 100_000, "sentences": 1_000_000, "sample_of": 1_000_000},
    "large": {"lines": 500_000, "sentences": 10_000_000, "sample_of": 10_000_000},
}
N_BATCHES, BS, BPTT, TPB, MAX_LEN = 1000, 32, 256, 2000, 100
N_WORDS = 30_000


def _text(size: str, work: Path) -> tuple[Path, Path]:
    return work / f"bin.{size}.txt", work / f"bin.{size}.vocab"


def _corpus(size: str, work: Path) -> Path:
    return work / f"corpus.{size}.json"


def _write_corpus(path: Path, n: int, seed: int = 0, mean: int = 20) -> None:
    rng = np.random.default_rng(seed)
    tok_path, off_path = sibling_paths(path)
    n_tok = pos = 0
    with open(tok_path, "wb") as ft, open(off_path, "wb") as fo:
        wt, wo = _NpyWriter(ft, np.uint16), _NpyWriter(fo, np.int64)
        wt.write(np.array([EOS]))
        wo.write(np.array([0]))
        for a in range(0, n, 1 << 20):
            k = min(n - a, 1 << 20)
            lengths = np.maximum(rng.poisson(mean, k), 1)
            ids = rng.integers(14, N_WORDS, int(lengths.sum()) + k).astype(np.uint16)
            ends = np.cumsum(lengths + 1) - 1  # the EOS after each sentence
            ids[ends] = EOS
            wt.write(ids)
            wo.write(pos + 1 + ends)
            pos, n_tok = pos + len(ids), n_tok + int(lengths.sum())
        wt.close()
        wo.close()
    path.write_text(json.dumps({"format": FORMAT, "n_sentences": n, "n_tokens": n_tok, "lang": "hx",
                                "n_words": N_WORDS}))


def _write_text(text: Path, vocab: Path, n_lines: int, seed: int = 2) -> None:
    """BPE'd text in miniature: lines of 5-60 tokens drawn by Zipf's law from a fixed vocabulary of N_WORDS tokens
    (the vocabulary of a BPE'd corpus does not grow with it), and that vocabulary."""
    rng = np.random.default_rng(seed)
    words = [f"t{i}" for i in range(N_WORDS)]
    with open(text, "w", encoding="utf-8") as f:
        for start in range(0, n_lines, 10_000):
            lengths = rng.integers(5, 61, min(10_000, n_lines - start))
            ids = iter(zipf_sample(rng, int(lengths.sum()), N_WORDS).tolist())
            f.writelines(" ".join(words[next(ids)] for _ in range(k)) + "\n" for k in lengths)
    vocab.write_text("".join(f"{w} {N_WORDS - i}\n" for i, w in enumerate(words)))


def prepare(size: str, work: Path) -> None:
    text, vocab = _text(size, work)
    if not vocab.exists():
        _write_text(text, vocab, SIZES[size]["lines"])
    if not _corpus(size, work).exists():
        _write_corpus(_corpus(size, work), SIZES[size]["sentences"])
    big = _big(size, work)
    if not big.exists():
        with open(big.with_suffix(".tmp"), "wb") as f:
            for start in range(0, SIZES[size]["sample_of"], 1_000_000):
                f.write("".join(f"sentence number {i}\n" for i in range(start, start + 1_000_000)).encode())
        big.with_suffix(".tmp").rename(big)


def _big(size: str, work: Path) -> Path:
    return work / f"lines.{size}.txt"


def sample_relm(size: str, work: Path) -> dict:
    from relm.text.fetch import fetch
    n = SIZES[size]["sample_of"]
    out = fetch({"path": str(_big(size, work))}, work / f"sample.relm.{size}.txt", lines=n // 10, seed=0,
                log=lambda *_: None)
    out.unlink()
    return {"items": n, "unit": "lines", "kept": n // 10}


def sample_reference(size: str, work: Path) -> dict:
    import itertools
    n = SIZES[size]["sample_of"]
    with open(_big(size, work), "rb") as f:
        total = sum(1 for _ in f)
    keep = np.zeros(total, dtype=bool)
    keep[np.random.default_rng(0).choice(total, n // 10, replace=False)] = True
    out = work / f"sample.ref.{size}.txt"
    with open(_big(size, work), "rb") as f, open(out, "wb") as g:
        g.writelines(itertools.compress(f, keep))
    out.unlink()
    return {"items": n, "unit": "lines", "kept": n // 10}


def _digest(path: Path) -> str:
    """sha1 of the two arrays' data (not their headers), read in pieces: the same arrays give the same digest, and
    the digest adds no memory that grows with the corpus to the measurement."""
    import hashlib
    h = hashlib.sha1()
    for p in sibling_paths(path):
        with open(p, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            h.update(f"{dtype.str}{shape}".encode())
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def binarize_relm(size: str, work: Path) -> dict:
    text, vocab = _text(size, work)
    out = work / f"out.relm.{size}.json"
    meta = binarize(text, vocab, out, "hx", log=lambda *_: None)
    return {"items": meta["n_sentences"], "unit": "lines", "tokens": meta["n_tokens"], "digest": _digest(out)}


def binarize_in_memory(size: str, work: Path) -> dict:
    from relm.data.dictionary import Dictionary
    text, vocab = _text(size, work)
    dico = Dictionary.read_vocab(vocab)
    ids, offs = [EOS], [0]
    with open(text, encoding="utf-8") as f:
        for line in f:
            ids.extend(dico.encode(line.rstrip("\n")))
            ids.append(EOS)
            offs.append(len(ids) - 1)
    out = work / f"out.mem.{size}.json"
    tok_path, off_path = sibling_paths(out)
    np.save(tok_path, np.array(ids, dtype=np.uint16 if len(dico) < 65536 else np.int32))
    np.save(off_path, np.array(offs, dtype=np.int64))
    return {"items": len(offs) - 1, "unit": "lines", "tokens": len(ids) - len(offs), "digest": _digest(out)}


def _batches_result(size: str, t0: float, t1: float, t2: float, checksum: int) -> dict:
    return {"items": N_BATCHES, "unit": "batches", "sentences": SIZES[size]["sentences"], "open_s": t1 - t0,
            "batches_s": t2 - t1, "timed_s": t2 - t0, "checksum": checksum}


def mlm_relm(size: str, work: Path) -> dict:
    from relm.data.batches import StreamBatches
    t0 = time.perf_counter()
    it = StreamBatches(Corpus(_corpus(size, work)), BS, BPTT, seed=0)
    t1 = time.perf_counter()
    s = sum(int(it.next()[0][0, 0]) for _ in range(N_BATCHES))
    return _batches_result(size, t0, t1, time.perf_counter(), s)


def mlm_reference(size: str, work: Path) -> dict:
    import torch
    t0 = time.perf_counter()
    tok = np.load(sibling_paths(_corpus(size, work))[0], mmap_mode="r")
    t1 = time.perf_counter()
    n, s = len(tok) // (BS * BPTT), 0
    for i in np.random.default_rng(0).integers(0, n, N_BATCHES):
        x = torch.from_numpy(tok[i * BS * BPTT: (i + 1) * BS * BPTT].astype(np.int64).reshape(BS, BPTT))
        s += int(x[0, 0])
    return _batches_result(size, t0, t1, time.perf_counter(), s)


def unmt_relm(size: str, work: Path) -> dict:
    from relm.data.batches import SentenceBatches
    t0 = time.perf_counter()
    it = SentenceBatches(Corpus(_corpus(size, work)), TPB, 64, MAX_LEN, seed=0)
    it._pass(0)  # the pass is computed on the first batch; count it as opening
    t1 = time.perf_counter()
    s = sum(int(it.next()[1].sum()) for _ in range(N_BATCHES))
    return _batches_result(size, t0, t1, time.perf_counter(), s)


def unmt_reference(size: str, work: Path) -> dict:
    import torch
    t0 = time.perf_counter()
    tok, off = (np.load(p, mmap_mode="r") for p in sibling_paths(_corpus(size, work)))
    t1 = time.perf_counter()
    rng, s = np.random.default_rng(0), 0
    per_batch = TPB // 22  # sentences of mean length 20 (+ BOS, EOS) in a batch of TPB tokens
    for _ in range(N_BATCHES):
        ids = rng.integers(0, len(off) - 1, per_batch)
        sents = [tok[off[i] + 1: off[i + 1]] for i in ids]
        x = torch.full((len(sents), max(len(z) for z in sents) + 2), PAD, dtype=torch.long)
        for r, z in enumerate(sents):
            x[r, 0] = BOS
            x[r, 1: len(z) + 1] = torch.from_numpy(z.astype(np.int64))
            x[r, len(z) + 1] = EOS
        s += len(sents)
    return _batches_result(size, t0, t1, time.perf_counter(), s)


CASES = {
    "binarize": {"relm": binarize_relm, "reference": binarize_in_memory},
    "mlm_batches": {"relm": mlm_relm, "reference": mlm_reference},
    "unmt_batches": {"relm": unmt_relm, "reference": unmt_reference},
    "sample": {"relm": sample_relm, "reference": sample_reference},
}


def project(rows: list[dict], n: float) -> dict:
    """Seconds linear in sentences (lines); memory = the private figure (mapped file pages are page cache the kernel
    drops under pressure), flat where relm streams (binarize, sampling) or maps (MLM batches), linear where a pass
    holds per-sentence indices (UNMT batches) and for the in-memory references."""
    flat = {("binarize", "relm"), ("sample", "relm"), "mlm_batches"}
    return project_linear(rows, n, flat_memory=flat, memory="private_mb")
