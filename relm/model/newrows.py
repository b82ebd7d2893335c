"""Starting rows for the new LMR tokens of a RE-LM vocabulary extension (config `extension.init`).

  random   the original (RE-LM src/model/__init__.py: modify_params, tied weights): U(-1/dim, 1/dim), drawn when the
           MLM stage starts (relm.model.extend), with the run's seed
  mean     every new row is the mean of the pretrained rows of the HMR tokens (the special words left out)
  subword  a new token's row is the mean of the rows of its segmentation by the HMR codes: the HMR model's own view
           of the string (no other data)
  aligned  lexically aligned rows (Chronopoulou et al., NAACL 2021, "Improving the Lexical Ability of Pretrained
           Language Models for Unsupervised Neural Machine Translation"): skip-gram vectors per language on the BPE'd
           monolingual corpora (gensim), an orthogonal map LMR -> HMR learned from identical strings and refined by
           Procrustes on mutual nearest neighbours (the self-learning of Artetxe et al., ACL 2017), then a linear map
           from the HMR skip-gram space into the MLM's embedding space, fitted on the HMR tokens
A new token a method cannot place (no piece known to the HMR vocabulary; too rare for the skip-gram) gets the mean
row. Rows are computed once per pair by `relm vocab init-rows` into a .npy file (n_new x dim, float32) with a JSON
sidecar that records the method, its inputs and its figures; the MLM stage reads both (relm.train.mlm.load_init).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np

from relm.config import EXTENSION_INITS
from relm.data.dictionary import Dictionary
from relm.errors import CheckpointError, eprint
from relm.files import atomic_output, sha256_file
from relm.model.checkpoint import load_start, strip_module_prefix
from relm.model.extend import extension_size
from relm.text.bpe import BPE, SEP
from relm.tokens import N_SPECIAL


def hmr_mean(emb: np.ndarray) -> np.ndarray:
    """The mean of the HMR token rows (special words left out): `mean`'s rows, and every method's fallback."""
    return emb[N_SPECIAL:].mean(0)


def mean_rows(emb: np.ndarray, n_new: int) -> np.ndarray:
    return np.repeat(hmr_mean(emb)[None], n_new, axis=0)


def subword_pieces(token: str, bpe: BPE, known: set[str]) -> list[str]:
    """The HMR tokens that make up `token` (a BPE token, "xyz@@" inside a word): itself if the HMR vocabulary has
    it, else the HMR codes' segmentation of its string; a piece the vocabulary lacks is split into characters, and
    what is still unknown is left out."""
    if token in known:
        return [token]
    inner = token.endswith(SEP)
    word = token[: -len(SEP)] if inner else token
    if not word:
        return []
    pieces = list(bpe.segment_word(word))
    out = []
    for i, piece in enumerate(pieces):
        final = i == len(pieces) - 1 and not inner
        tok = piece if final else piece + SEP
        if tok in known:
            out.append(tok)
            continue
        chars = [c + SEP for c in piece[:-1]] + [piece[-1] if final else piece[-1] + SEP]
        out.extend(c for c in chars if c in known)
    return out


def subword_rows(emb: np.ndarray, words: list[str], new_tokens: list[str], codes) -> tuple[np.ndarray, dict]:
    ids = {w: i for i, w in enumerate(words) if i >= N_SPECIAL}
    known = set(ids)
    bpe = BPE(codes, known)
    fallback = hmr_mean(emb)
    rows, n_pieces, unplaced = [], [], 0
    for tok in new_tokens:
        pieces = subword_pieces(tok, bpe, known)
        if pieces:
            rows.append(emb[[ids[p] for p in pieces]].mean(0))
            n_pieces.append(len(pieces))
        else:
            rows.append(fallback)
            unplaced += 1
    stats = {"mean_pieces": round(float(np.mean(n_pieces)), 3) if n_pieces else 0.0, "unplaced": unplaced}
    return np.stack(rows) if rows else np.zeros((0, emb.shape[1]), emb.dtype), stats


# --- aligned ----------------------------------------------------------------------------------------------------

def normalize(m: np.ndarray) -> np.ndarray:
    """Unit length, mean-centred, unit length again (the usual preprocessing of cross-lingual mappings)."""
    m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    m = m - m.mean(0, keepdims=True)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def procrustes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The orthogonal W minimizing ||x W - y|| (Schönemann 1966): W = U V^T from the SVD of x^T y."""
    u, _, vt = np.linalg.svd(x.T @ y)
    return u @ vt


def align(src: np.ndarray, tgt: np.ndarray, seed: list[tuple[int, int]], iters: int, top: int) -> np.ndarray:
    """Orthogonal map src -> tgt from the seed pairs (row i of src ~ row j of tgt), refined `iters` times: the
    dictionary becomes the seed pairs plus the mutual nearest neighbours among the `top` first rows of each side
    (rows in frequency order), and the map is fitted again."""
    i, j = map(list, zip(*seed))
    w = procrustes(src[i], tgt[j])
    s, t = src[:top], tgt[:top]
    for _ in range(iters):
        sim = (s @ w) @ t.T
        fwd, bwd = sim.argmax(1), sim.argmax(0)
        mutual = [(a, int(b)) for a, b in enumerate(fwd) if bwd[b] == a]
        pairs = sorted(set(seed) | set(mutual))
        i, j = map(list, zip(*pairs))
        w = procrustes(src[i], tgt[j])
    return w


def precision_at_1(src: np.ndarray, tgt: np.ndarray, w: np.ndarray, pairs: list[tuple[int, int]]) -> float:
    """Share of the pairs (i, j) whose mapped src row i has tgt row j as its nearest neighbour (cosine)."""
    if not pairs:
        return float("nan")
    i, j = map(np.asarray, zip(*pairs))
    return float(((src[i] @ w) @ tgt.T).argmax(1).__eq__(j).mean())


def skipgram(path: str | Path, cfg, seed: int):
    """Skip-gram vectors (gensim Word2Vec) of the tokens of a BPE'd text file, its first cfg.max_lines lines; one
    worker thread, so that the same seed gives the same vectors."""
    from gensim.models import Word2Vec
    from gensim.models.word2vec import LineSentence

    model = Word2Vec(LineSentence(str(path), limit=cfg.max_lines or None), sg=1, vector_size=cfg.dim,
                     window=cfg.window, min_count=cfg.min_count, negative=cfg.negative, epochs=cfg.epochs,
                     workers=1, seed=seed)
    return list(model.wv.index_to_key), model.wv.vectors.astype(np.float64)


def aligned_rows(emb: np.ndarray, words: list[str], new_tokens: list[str], hmr_text, lmr_text, cfg, seed: int,
                 log: Callable = eprint) -> tuple[np.ndarray, dict]:
    h_words, h_vec = skipgram(hmr_text, cfg, seed)
    log(f"skip-gram: {len(h_words)} HMR tokens from {hmr_text}")
    l_words, l_vec = skipgram(lmr_text, cfg, seed)
    log(f"skip-gram: {len(l_words)} LMR tokens from {lmr_text}")
    h_vec, l_vec = normalize(h_vec), normalize(l_vec)
    h_id = {w: i for i, w in enumerate(h_words)}
    same = [(i, h_id[w]) for i, w in enumerate(l_words) if w in h_id]
    if len(same) < 10:
        raise ValueError(f"only {len(same)} tokens are spelled alike in {hmr_text} and {lmr_text}: too few to "
                         f"learn a map from identical strings")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(same))
    n_held = round(cfg.heldout * len(same))
    held, train = [same[k] for k in order[:n_held]], [same[k] for k in order[n_held:]]
    w0 = procrustes(l_vec[[i for i, _ in train]], h_vec[[j for _, j in train]])
    w = align(l_vec, h_vec, train, cfg.refine_iters, cfg.refine_top)
    p0, p = precision_at_1(l_vec, h_vec, w0, held), precision_at_1(l_vec, h_vec, w, held)
    log(f"map LMR -> HMR: {len(train)} identical strings as the seed dictionary; precision@1 on {len(held)} held-out "
        f"identical strings: {p0:.3f} from the seed, {p:.3f} after {cfg.refine_iters} refinement(s)")
    # linear map from the HMR skip-gram space (with a bias) to the MLM's embedding rows, least squares
    mlm_id = {w: i for i, w in enumerate(words) if i >= N_SPECIAL}
    both = [(h_id[t], mlm_id[t]) for t in h_words if t in mlm_id]
    x = np.c_[h_vec[[a for a, _ in both]], np.ones(len(both))]
    y = emb[[b for _, b in both]].astype(np.float64)
    a, *_ = np.linalg.lstsq(x, y, rcond=None)
    r2 = 1 - ((x @ a - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    log(f"map skip-gram -> MLM embeddings: fitted on {len(both)} HMR tokens, R^2 {r2:.3f}")
    l_id = {w: i for i, w in enumerate(l_words)}
    fallback = hmr_mean(emb)
    rows, unplaced = [], 0
    for tok in new_tokens:
        if tok in l_id:
            rows.append(np.r_[l_vec[l_id[tok]] @ w, 1.0] @ a)
        else:
            rows.append(fallback)
            unplaced += 1
    stats = {"hmr_tokens": len(h_words), "lmr_tokens": len(l_words), "seed_pairs": len(train),
             "heldout_pairs": len(held), "precision_seed": round(p0, 4), "precision": round(p, 4),
             "linear_map_tokens": len(both), "linear_map_r2": round(float(r2), 4), "unplaced": unplaced}
    return np.stack(rows) if rows else np.zeros((0, emb.shape[1])), stats


def init_rows(method: str, checkpoint, extension, vocab, out, codes=None, hmr_text=None, lmr_text=None, cfg=None,
              seed: int = 0, log: Callable = eprint) -> dict:
    """`relm vocab init-rows`: the new rows of the extension `extension` (sidecar) of the HMR MLM `checkpoint` to the
    extended vocabulary `vocab`, by `method`, written to `out` (+ .json); returns the sidecar's content."""
    if method not in EXTENSION_INITS[1:]:
        raise ValueError(f"method must be one of {', '.join(EXTENSION_INITS[1:])} (random rows are drawn by the MLM "
                         "stage)")
    ck = load_start(checkpoint, ("mlm",))
    dico = Dictionary.read_vocab(vocab)
    n_new = extension_size(extension, ck["words"], dico, checkpoint)
    emb = strip_module_prefix(ck["model"])["embeddings.weight"].float().numpy()
    new_tokens = dico.words[len(ck["words"]):]
    stats: dict = {}
    if method == "mean":
        rows = mean_rows(emb, n_new)
    elif method == "subword":
        rows, stats = subword_rows(emb, list(ck["words"]), new_tokens, codes)
    else:
        rows, stats = aligned_rows(emb, list(ck["words"]), new_tokens, hmr_text, lmr_text, cfg, seed, log)
    norms = np.linalg.norm(rows, axis=1) if n_new else np.zeros(1)
    stats["mean_row_norm"] = round(float(norms.mean()), 4)
    stats["mean_hmr_row_norm"] = round(float(np.linalg.norm(emb[N_SPECIAL:], axis=1).mean()), 4)
    inputs = {"checkpoint": checkpoint, "extension": extension, "vocab": vocab}
    inputs.update({k: v for k, v in (("codes", codes), ("hmr_text", hmr_text), ("lmr_text", lmr_text)) if v})
    info = {"method": method, "inputs": {k: str(v) for k, v in inputs.items()}, "seed": seed,
            "settings": dataclasses.asdict(cfg) if cfg is not None and method == "aligned" else None, **stats}
    write_rows(out, rows, info)
    log(f"extension.init {method}: {n_new} new rows -> {out} ({json.dumps(stats)})")
    return info


# --- files ------------------------------------------------------------------------------------------------------

def write_rows(out: str | Path, rows: np.ndarray, info: dict) -> None:
    """rows -> out (.npy, float32) and its sidecar out with suffix .json."""
    out = Path(out)
    with atomic_output(out, "wb") as f:
        np.save(f, rows.astype(np.float32), allow_pickle=False)
    info = {**info, "n_new": int(rows.shape[0]), "dim": int(rows.shape[1]), "rows_sha256": sha256_file(out)}
    with atomic_output(out.with_suffix(".json")) as f:
        f.write(json.dumps(info, indent=2) + "\n")


def read_rows(path: str | Path, method: str, n_new: int, dim: int) -> np.ndarray:
    """The rows of `path`, checked against its sidecar (method, sha256) and the model (n_new x dim)."""
    path, side = Path(path), Path(path).with_suffix(".json")
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the new rows {path} and their sidecar {side}: {e}") from None
    if info.get("method") != method:
        raise CheckpointError(f"{side}: rows made by extension.init {info.get('method')!r}, the run asks for "
                              f"{method!r}")
    if info.get("rows_sha256") != sha256_file(path):
        raise CheckpointError(f"{path} does not match the sha256 in {side}: rewrite both with relm vocab init-rows")
    if rows.shape != (n_new, dim):
        raise CheckpointError(f"{path} has rows of shape {tuple(rows.shape)}, the extension needs ({n_new}, {dim})")
    return rows
