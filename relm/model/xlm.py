"""Import of original XLM / RE-LM checkpoints into relm's checkpoint format.

XLM checkpoints (XLM src/trainer.py: Trainer.save_checkpoint) pickle `params.__dict__`, which holds numpy
arrays/scalars and a torch tensor, so they cannot be read with plain `torch.load(weights_only=True)`. We do NOT use an
unrestricted unpickler: we use torch's own restricted unpickler (`weights_only=True`, for both the zip and the legacy
torch.save formats), extended through `torch.serialization.safe_globals` by exactly the numpy names needed to rebuild
arrays, dtypes and scalars (including their numpy<2 names `numpy.core.multiarray.*`). Every other global (os.system,
arbitrary classes, ...) is refused with an error naming it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from relm.config import ModelConfig
from relm.errors import CheckpointError
from relm.model.checkpoint import build_and_load, load_error_detail, save_model, strip_module_prefix


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


def convert_xlm_checkpoint(in_path, out_path) -> dict:
    """Convert an XLM/RE-LM checkpoint ('model', or 'encoder'+'decoder') into a relm checkpoint; returns a summary."""
    ck = load_xlm_checkpoint(in_path)
    if not isinstance(ck, dict) or "params" not in ck or "dico_id2word" not in ck:
        raise CheckpointError(f"{in_path} is not an XLM checkpoint (needs 'params', 'dico_id2word', and weights)")
    params = dict(ck["params"])
    if "model" in ck:
        kind, names = "mlm", {"model": ("model", False)}
    elif "encoder" in ck and "decoder" in ck:
        kind, names = "unmt", {"encoder": ("encoder", False), "decoder": ("decoder", True)}
    else:
        raise CheckpointError(f"{in_path}: no 'model' or 'encoder'+'decoder' weights (keys: {sorted(ck)})")

    id2word = ck["dico_id2word"]
    words = [id2word[i] for i in range(len(id2word))]
    word2id, counts_by_word = ck.get("dico_word2id") or {}, ck.get("dico_counts") or {}
    if word2id and any(word2id.get(w) != i for i, w in enumerate(words)):
        raise CheckpointError(f"{in_path}: dico_word2id is not the inverse of dico_id2word")
    counts = [int(counts_by_word.get(w, 0)) for w in words]
    if words[:4] != ["<s>", "</s>", "<pad>", "<unk>"]:
        raise CheckpointError(f"{in_path}: unexpected special tokens {words[:4]} (XLM dictionary expected)")

    states = {name: strip_module_prefix(ck[key]) for name, (key, _) in names.items()}
    first = next(iter(states.values()))
    cfg = model_config_from_params(params, first)
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
    save_model(out_path, kind, models, cfg, langs, words, counts, config)
    return {"kind": kind, "n_words": len(words), "langs": langs, "model_config": cfg,
            "n_params": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}, "out": str(out_path)}
