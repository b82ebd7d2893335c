"""Translate raw text with a trained UNMT checkpoint (`relm translate`, and the test-set translations of the workflow).

Input lines go through the training pipeline (normalization + Moses tokenization for the source language, BPE with
the source side's codes, the checkpoint's dictionary), are translated in length-sorted batches (greedy or beam
search), and come back BPE-removed and detokenized, one output line per input line, in input order. Unlike relm's
translate.py, raw text is accepted, empty lines stay (empty) and long lines are truncated instead of dropped.
"""
from __future__ import annotations

import sys
import warnings

import torch

from relm.data.dictionary import Dictionary
from relm.tokens import EOS, N_SPECIAL, PAD, UNK
from relm.generate import generate_beam, generate_greedy, translation_limit
from relm.errors import CheckpointError
from relm.model.checkpoint import LoadedModel, load_model
from relm.text.bpe import BPE
from relm.files import atomic_output
from relm.text.tokenize import detokenize_line, iter_lines, normalize_tokenize_line, remove_bpe


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _load(model, device) -> LoadedModel:
    """A "unmt" checkpoint path (or an already loaded model) -> LoadedModel with encoder and decoder."""
    if not isinstance(model, LoadedModel):
        return load_model(model, device, kinds=("unmt",))
    if model.decoder is None:
        raise CheckpointError(f"the model is a {model.kind!r} model; translation needs a 'unmt' model "
                              "(encoder + decoder)")
    return model


def _lang_id(loaded: LoadedModel, lang: str) -> int:
    if lang not in loaded.langs:
        raise ValueError(f"language {lang!r} is not one of the model's languages {loaded.langs}")
    return loaded.langs.index(lang)


def encode_lines(lines, src_lang: str, bpe: BPE, dico: Dictionary, max_tokens: int) -> list[list[int]]:
    """Raw lines -> id lists (no BOS/EOS); longer than max_tokens is truncated with a warning."""
    out = []
    for i, line in enumerate(lines):
        ids = dico.encode(bpe.apply_line(normalize_tokenize_line(line, src_lang))) if line.strip() else []
        if len(ids) > max_tokens:
            warnings.warn(f"input line {i + 1} has {len(ids)} BPE tokens; truncated to the model's limit of {max_tokens}")
            ids = ids[:max_tokens]
        out.append(ids)
    return out


def decode_ids(ids, dico: Dictionary) -> str:
    """Generated ids (after BOS) -> BPE text, stopping at EOS; special words other than <unk> are dropped."""
    words = []
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        if i >= N_SPECIAL or i == UNK:
            words.append(dico[i])
    return " ".join(words)


@torch.inference_mode()
def translate_ids(loaded: LoadedModel, batch_ids: list[list[int]], src_id: int, tgt_id: int, beam_size=1,
                  length_penalty=1.0, early_stopping=False, max_len_a=1.5, max_len_b=10) -> list[list[int]]:
    """One batch of non-empty id lists -> generated ids (without BOS), in the same order."""
    enc, dec = loaded.encoder, loaded.decoder
    device = next(enc.parameters()).device
    lengths = torch.tensor([len(s) + 2 for s in batch_ids], device=device)  # + BOS and EOS
    x = torch.full((len(batch_ids), int(lengths.max())), PAD, dtype=torch.long, device=device)
    for i, s in enumerate(batch_ids):
        x[i, 0] = EOS  # XLM's BOS is the EOS id
        x[i, 1 : len(s) + 1] = torch.tensor(s, dtype=torch.long)
        x[i, len(s) + 1] = EOS
    src_enc = enc(x, lengths, torch.full_like(x, src_id), causal=False)
    max_len = translation_limit(max_len_a, max_len_b)(lengths, loaded.model_config.max_positions)
    if beam_size == 1:
        out, out_len = generate_greedy(dec, src_enc, lengths, tgt_id, max_len)
    else:
        out, out_len = generate_beam(dec, src_enc, lengths, tgt_id, beam_size, length_penalty, early_stopping, max_len)
    return [out[i, 1 : int(out_len[i])].tolist() for i in range(len(batch_ids))]


def batches(order: list[int], lengths: list[int], batch_size: int, tokens_per_batch: int = 0) -> list[list[int]]:
    """Consecutive chunks of `order` (sorted longest first, `lengths` in that order): at most batch_size sentences
    and, with tokens_per_batch > 0, at most that many padded tokens (rows x the first, longest row); a sentence
    longer than the budget makes a batch of its own."""
    out, start = [], 0
    while start < len(order):
        n = min(batch_size, len(order) - start)
        if tokens_per_batch > 0:
            n = max(1, min(n, tokens_per_batch // lengths[start]))
        out.append(order[start : start + n])
        start += n
    return out


def translate_lines(model_path, lines: list[str], src_lang: str, tgt_lang: str, codes, beam_size: int = 1,
                    length_penalty: float = 1.0, early_stopping: bool = False, batch_size: int = 32,
                    max_len_a: float = 1.5, max_len_b: int = 10, device: str = "cpu",
                    tokens_per_batch: int = 0) -> tuple[list[str], list[str]]:
    """Translate raw lines. Returns (detokenized lines, tokenized BPE-removed lines), one per input line.

    model_path: a "unmt" checkpoint path (or an already loaded LoadedModel); codes: BPE codes of the source side.
    """
    loaded = _load(model_path, resolve_device(device))
    src_id, tgt_id = _lang_id(loaded, src_lang), _lang_id(loaded, tgt_lang)
    dico = Dictionary.from_words(loaded.words, loaded.counts)
    bpe = codes if isinstance(codes, BPE) else BPE(codes)
    ids = encode_lines(lines, src_lang, bpe, dico, loaded.model_config.max_positions - 2)
    tok = [""] * len(lines)
    order = sorted((i for i in range(len(ids)) if ids[i]), key=lambda i: -len(ids[i]))
    for chunk in batches(order, [len(ids[i]) + 2 for i in order], batch_size, tokens_per_batch):
        outs = translate_ids(loaded, [ids[i] for i in chunk], src_id, tgt_id, beam_size, length_penalty,
                             early_stopping, max_len_a, max_len_b)
        for i, o in zip(chunk, outs):
            tok[i] = remove_bpe(decode_ids(o, dico))
    detok = [detokenize_line(t, tgt_lang) if t else "" for t in tok]
    return detok, tok


def _one_line(s: str) -> str:
    return s.replace("\r", " ").replace("\n", " ")


def _write_lines(path, lines) -> None:
    if str(path) == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write("".join(_one_line(l) + "\n" for l in lines).encode("utf-8"))
        sys.stdout.buffer.flush()
        return
    with atomic_output(path) as f:
        f.write("".join(_one_line(l) + "\n" for l in lines))


def translate_file(model, inp, out, src_lang: str, tgt_lang: str, codes, tok_out=None, **kwargs) -> int:
    """Translate file `inp` ("-" = stdin) to `out` ("-" = stdout), one line per input line; optionally also write
    the tokenized (BPE-removed) translations to `tok_out`. kwargs: see translate_lines. Returns the line count."""
    if str(inp) == "-":
        text = sys.stdin.buffer.read().decode("utf-8")
        lines = [l.removesuffix("\r") for l in text.removesuffix("\n").split("\n")] if text else []
    else:
        lines = list(iter_lines(inp))
    detok, tok = translate_lines(model, lines, src_lang, tgt_lang, codes, **kwargs)
    _write_lines(out, detok)
    if tok_out is not None:
        _write_lines(tok_out, tok)
    return len(lines)
