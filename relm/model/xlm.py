"""Import of original XLM / RE-LM checkpoints into relm's checkpoint format.

XLM checkpoints (XLM src/trainer.py: Trainer.save_checkpoint) pickle `params.__dict__`, which holds numpy
arrays/scalars and a torch tensor, so they cannot be read with plain `torch.load(weights_only=True)`. We do NOT use an
unrestricted unpickler: we use torch's own restricted unpickler (`weights_only=True`, for both the zip and the legacy
torch.save formats), extended through `torch.serialization.safe_globals` by exactly the numpy names needed to rebuild
arrays, dtypes and scalars (including their numpy<2 names `numpy.core.multiarray.*`). Every other global (os.system,
arbitrary classes, ...) is refused with an error naming it.

A released MLM (the workflow's `pretrained` block) comes as three files: the checkpoint, its fastBPE codes and its
fastBPE vocabulary (XLM's ids: 14 special words, then the vocabulary's lines in file order, XLM
src/data/dictionary.py: Dictionary.read_vocab). `convert_xlm_checkpoint(..., vocab=, expect_model=)` checks, before
anything trains on it, that the vocabulary is the checkpoint's dictionary and that the checkpoint has the
architecture the config asks for; `fetch_checkpoint` acquires the checkpoint file as it is.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from relm.config import ModelConfig
from relm.data.dictionary import Dictionary
from relm.errors import CheckpointError, InputError, eprint
from relm.files import atomic_write_text, sha256_file
from relm.model.checkpoint import ARCH_FIELDS, build_and_load, load_error_detail, save_model, strip_module_prefix
from relm.tokens import N_SPECIAL


def _numpy_globals() -> list:
    try:  # numpy >= 2 names it numpy._core; pickles written by numpy 1.x name numpy.core.multiarray
        from numpy._core import multiarray as ma
    except ImportError:
        from numpy.core import multiarray as ma
    dtype_classes = [getattr(np.dtypes, n) for n in np.dtypes.__all__] if hasattr(np, "dtypes") else []  # numpy>=1.25
    names = ("numpy.core.multiarray", "numpy._core.multiarray")
    return [np.ndarray, np.dtype, *dtype_classes,
            *((ma._reconstruct, f"{m}._reconstruct") for m in names), *((ma.scalar, f"{m}.scalar") for m in names)]


def load_xlm_checkpoint(path) -> dict:
    """Read an XLM/RE-LM checkpoint with the restricted unpickler described in the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"XLM checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"refused or failed to read XLM checkpoint {path}: {load_error_detail(e)}") from e


def _plain(value):
    """Keep only JSON-like values (for the record of the original params in our config)."""
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass
        return _plain(value.item())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return None if any(i is _SKIP for i in items) else items
    if isinstance(value, dict):
        return {str(k): v for k, v in ((k, _plain(v)) for k, v in value.items()) if v is not _SKIP}
    return _SKIP


_SKIP = object()


def model_config_from_params(params: dict, state: dict) -> ModelConfig:
    """Map XLM's params to our ModelConfig (refusing options our model does not implement)."""
    if params.get("asm", False):
        raise CheckpointError("XLM checkpoints trained with --asm (adaptive softmax) are not supported")
    if not params.get("share_inout_emb", True):
        raise CheckpointError("XLM checkpoints with share_inout_emb=False are not supported (relm always ties)")
    if params.get("use_memory", False):
        raise CheckpointError("XLM checkpoints with product-key memory layers are not supported")
    use_adapters = bool(params.get("use_adapters", False))
    return ModelConfig(
        dim=int(params["emb_dim"]), n_layers=int(params["n_layers"]), n_heads=int(params["n_heads"]),
        dropout=float(params.get("dropout", 0.1)), attention_dropout=float(params.get("attention_dropout", 0.1)),
        gelu=bool(params.get("gelu_activation", True)), use_lang_emb=bool(params.get("use_lang_emb", True)),
        pre_norm=False, sinusoidal=bool(params.get("sinusoidal_embeddings", False)),
        max_positions=int(state["position_embeddings.weight"].shape[0]),
        adapter_size=int(params.get("adapter_size", 0)) if use_adapters else 0)


def _langs(params: dict) -> tuple[list[str], list[int]]:
    """Language names in our order (sorted) and, for each, its row in the XLM lang_embeddings."""
    id2lang = params.get("id2lang")
    if id2lang:
        xlm_order = [id2lang[i] if i in id2lang else id2lang[str(i)] for i in range(len(id2lang))]
    else:
        xlm_order = list(params.get("langs") or [])
    n_langs = int(params.get("n_langs", len(xlm_order)))
    if len(xlm_order) != n_langs:
        raise CheckpointError(f"params: n_langs={n_langs} but {len(xlm_order)} language names {xlm_order}")
    langs = sorted(xlm_order)
    return langs, [xlm_order.index(lang) for lang in langs]


def check_vocab(vocab, ck_path, n_rows: int, ck_words: list[str] | None) -> Dictionary:
    """The dictionary of the vocabulary file `vocab`, which must be the checkpoint's: as many ids (14 special words +
    its tokens) as the checkpoint has embedding rows, and, when the checkpoint carries its dictionary
    (`dico_id2word`), the same word at every id. CheckpointError naming both files and the numbers otherwise."""
    dico = Dictionary.read_vocab(vocab)
    n_tok = len(dico) - N_SPECIAL
    where = f"vocabulary {vocab} does not match checkpoint {ck_path}"
    own = f" (its dictionary: {len(ck_words)} words)" if ck_words is not None else ""
    if len(dico) != n_rows:
        raise CheckpointError(f"{where}: {n_tok} tokens + {N_SPECIAL} special words = {len(dico)} ids, but the "
                              f"checkpoint has {n_rows} embedding rows{own}")
    if ck_words is not None and ck_words != dico.words:
        if len(ck_words) != len(dico):
            raise CheckpointError(f"{where}: {len(dico)} ids ({n_tok} tokens + {N_SPECIAL} special words), but the "
                                  f"checkpoint's dictionary has {len(ck_words)} words")
        i = next(i for i, (a, b) in enumerate(zip(dico.words, ck_words)) if a != b)
        raise CheckpointError(f"{where}: id {i} is {dico.words[i]!r} in the vocabulary but {ck_words[i]!r} in the "
                              f"checkpoint's dictionary (ids: {N_SPECIAL} special words, then the vocabulary's lines "
                              "in file order)")
    return dico


def check_expected_model(cfg: ModelConfig, expect: dict, ck_path) -> None:
    """`expect` ({config key: value}, the key's last part a ModelConfig field, e.g. {"model.dim": 1024}) must
    describe the checkpoint's architecture (the fields relm.model.checkpoint.check_arch compares; adapters may be
    new, but existing ones must keep their size). One CheckpointError lists every mismatch."""
    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    bad = []
    for key, value in expect.items():
        name = str(key).rsplit(".", 1)[-1]
        if name not in fields:
            raise ValueError(f"expected model setting {key!r}: {name!r} is not a model setting ({', '.join(fields)})")
        have = getattr(cfg, name)
        if name in ARCH_FIELDS and value != have:
            note = " (XLM and RE-LM are post-norm)" if name == "pre_norm" else ""
            bad.append(f"{key} = {value!r} but the checkpoint has {have!r}{note}")
        if name == "adapter_size" and cfg.adapter_size and value != cfg.adapter_size:
            bad.append(f"{key} = {value!r} but the checkpoint has adapters of size {cfg.adapter_size}")
    if bad:
        raise CheckpointError(f"checkpoint {ck_path} does not fit the config: " + "; ".join(bad))


def _dictionary(ck: dict, in_path) -> tuple[list[str], list[int]]:
    id2word = ck["dico_id2word"]
    words = [id2word[i] for i in range(len(id2word))]
    word2id, counts_by_word = ck.get("dico_word2id") or {}, ck.get("dico_counts") or {}
    if word2id and any(word2id.get(w) != i for i, w in enumerate(words)):
        raise CheckpointError(f"{in_path}: dico_word2id is not the inverse of dico_id2word")
    return words, [int(counts_by_word.get(w, 0)) for w in words]


def convert_xlm_checkpoint(in_path, out_path, vocab=None, expect_model: dict | None = None, summary=None,
                           kind: str | None = None) -> dict:
    """Convert an XLM/RE-LM checkpoint ('model', or 'encoder'+'decoder') into a relm checkpoint; returns a summary.
    kind: "mlm" or "unmt", the kind the checkpoint must be (an MLM has 'model', a UNMT model 'encoder'+'decoder').

    vocab: the vocabulary file the checkpoint was trained with (check_vocab); its words and counts become the
    checkpoint's, which then needs no `dico_id2word` of its own. expect_model: check_expected_model. summary: also
    write the summary (with both files' sha256) there as JSON. Nothing is written when a check fails."""
    ck = load_xlm_checkpoint(in_path)
    if not isinstance(ck, dict) or "params" not in ck or ("dico_id2word" not in ck and vocab is None):
        raise CheckpointError(f"{in_path} is not an XLM checkpoint (needs 'params', 'dico_id2word' or a vocabulary "
                              "file, and weights)")
    params = dict(ck["params"])
    want = kind
    if "model" in ck:
        kind, names = "mlm", {"model": ("model", False)}
    elif "encoder" in ck and "decoder" in ck:
        kind, names = "unmt", {"encoder": ("encoder", False), "decoder": ("decoder", True)}
    else:
        raise CheckpointError(f"{in_path}: no 'model' or 'encoder'+'decoder' weights (keys: {sorted(ck)})")
    if want is not None and kind != want:
        raise CheckpointError(f"{in_path} is a {kind} checkpoint ({', '.join(names)}), but a {want} checkpoint is "
                              f"needed here" + (" ('model' weights: an MLM)" if want == "mlm" else ""))

    states = {name: strip_module_prefix(ck[key]) for name, (key, _) in names.items()}
    first = next(iter(states.values()))
    if "embeddings.weight" not in first:
        raise CheckpointError(f"{in_path}: no embeddings.weight in its '{names[next(iter(names))][0]}' weights")
    words, counts = _dictionary(ck, in_path) if "dico_id2word" in ck else (None, None)
    if vocab is not None:
        dico = check_vocab(vocab, in_path, first["embeddings.weight"].shape[0], words)
        words, counts = dico.words, dico.counts
    if words[:4] != ["<s>", "</s>", "<pad>", "<unk>"]:
        raise CheckpointError(f"{in_path}: unexpected special tokens {words[:4]} (XLM dictionary expected)")
    cfg = model_config_from_params(params, first)
    if expect_model:
        check_expected_model(cfg, expect_model, in_path)
    langs, order = _langs(params)
    models = {}
    for name, (key, is_decoder) in names.items():
        state = dict(states[name])
        if "lang_embeddings.weight" in state and order != list(range(len(order))):
            state["lang_embeddings.weight"] = state["lang_embeddings.weight"][order]
        n_words = state["embeddings.weight"].shape[0]
        if n_words != len(words):
            raise CheckpointError(f"{in_path} [{key}]: {n_words} embedding rows but the dictionary has "
                                  f"{len(words)} words")
        models[name] = build_and_load(state, cfg, n_words, len(langs), is_decoder, f"{in_path} [{key}]")
    config = {"imported_from": str(in_path), "xlm_params": _plain(params),
              "epoch": _plain(ck.get("epoch")), "n_total_iter": _plain(ck.get("n_total_iter"))}
    if vocab is not None:
        config["vocab"] = str(vocab)
    save_model(out_path, kind, models, cfg, langs, words, counts, config)
    info = {"kind": kind, "n_words": len(words), "langs": langs, "model_config": cfg,
            "n_params": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}, "out": str(out_path)}
    if summary is not None:
        record = dict(info, model_config=dataclasses.asdict(cfg), checkpoint=str(in_path),
                      checkpoint_sha256=sha256_file(in_path), checked_model=dict(expect_model or {}))
        if vocab is not None:
            record.update(vocab=str(vocab), vocab_sha256=sha256_file(vocab))
        atomic_write_text(summary, json.dumps(record, indent=2) + "\n")
    return info


def fetch_checkpoint(source: dict, out, retries: int = 5, timeout: float = 60.0, retry_delay: float = 2.0,
                     log: Callable = eprint) -> Path:
    """The checkpoint file of `source`, as it is (relm fetch makes text of what it gets, which a checkpoint is not):
    {"url", "sha256"} is downloaded with relm fetch's resumable, retried download and checked against the sha256;
    {"path"[, "sha256"]} is hard-linked to `out` where the file system allows it, else copied (atomically)."""
    out = Path(out)
    other = sorted(set(source) - {"path", "url", "sha256"})
    if other:
        raise InputError(f"checkpoint source {source}: {', '.join(other)} not supported here (a checkpoint is taken as "
                         "it is: unpack an archive first and give the file's 'path')")
    out.parent.mkdir(parents=True, exist_ok=True)
    if "url" in source:
        from relm.text.fetch import _download  # the download of `relm fetch`: resumed, retried, checked

        if not source.get("sha256"):
            raise InputError(f"checkpoint source {source['url']} needs a 'sha256' checksum")
        part = out.with_name(out.name + ".part")
        if part.exists():
            log(f"fetch-checkpoint: resuming {source['url']} from {part.stat().st_size} bytes")
        _download(source["url"], part, source["sha256"].lower(), retries, timeout, retry_delay, log)
        os.replace(part, out)
        how = f"downloaded {source['url']}"
    elif "path" in source:
        src = Path(source["path"])
        if not src.is_file():
            raise InputError(f"checkpoint file {src} does not exist")
        want = source.get("sha256")
        if want and (got := sha256_file(src)) != want.lower():
            raise InputError(f"checksum mismatch for {src}: expected sha256 {want}, got {got}")
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(src, tmp)
                how = f"linked {src}"
            except OSError:  # another file system, or links not allowed
                shutil.copyfile(src, tmp)
                how = f"copied {src}"
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    else:
        raise InputError(f"checkpoint source needs 'path' or 'url' (got keys {sorted(source)})")
    log(f"fetch-checkpoint: {how} -> {out} ({out.stat().st_size} bytes)")
    return out
