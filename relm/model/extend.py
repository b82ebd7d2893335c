"""RE-LM vocabulary extension of model weights, and building the UNMT encoder/decoder from an MLM.

The extended dictionary keeps the pretrained ids 0..V_old-1 and appends the n_new LMR tokens (relm.text.vocab), so
the extension is an identity copy of the old rows plus new rows. In RE-LM the embedding matrix is tied to the output
layer and the output layer's Uniform(-1/dim, 1/dim) draw is loaded last, so that is the effective init of the new rows;
the new output-bias entries are 0 (reference §2.2-2.5). Language embeddings and adapters that are not in the checkpoint
keep their fresh initialisation.
"""
from __future__ import annotations

import torch

from relm.config import ModelConfig
from relm.errors import CheckpointError
from relm.model.checkpoint import strip_module_prefix
from relm.model.transformer import TransformerModel

EXTENDED_KEYS = ("embeddings.weight", "pred_layer.proj.weight", "pred_layer.proj.bias")
DECODER_ONLY_PREFIXES = ("encoder_attn.", "layer_norm15.")
FRESH_PREFIXES = ("lang_embeddings.", "adapters_")  # may be missing from a checkpoint: keep the fresh init


def extend_state_dict(state: dict, n_new: int, dim: int, generator: torch.Generator | None = None) -> dict:
    """Copy of `state` with n_new rows appended: token embeddings (= tied output matrix) ~ U(-1/dim, 1/dim), bias 0."""
    state = strip_module_prefix(state)
    old = state["embeddings.weight"]
    v_old, d = old.shape
    if d != dim:
        raise CheckpointError(f"checkpoint embeddings have dim {d}, the model has dim {dim}")
    if n_new < 0:
        raise ValueError(f"n_new must be >= 0, got {n_new}")
    new_rows = (torch.rand(n_new, dim, generator=generator, dtype=torch.float32) * 2 - 1) / dim
    emb = torch.cat([old, new_rows.to(old.dtype).to(old.device)], dim=0)
    out = dict(state)
    out["embeddings.weight"] = emb
    out["pred_layer.proj.weight"] = emb  # tied
    bias = state.get("pred_layer.proj.bias")
    if bias is not None:
        if bias.shape[0] != v_old:
            raise CheckpointError(f"checkpoint output bias has {bias.shape[0]} entries but {v_old} embedding rows")
        out["pred_layer.proj.bias"] = torch.cat([bias, bias.new_zeros(n_new)])
    return out


def _load_checked(model: TransformerModel, state: dict, allowed_missing: tuple[str, ...], where: str) -> None:
    """load_state_dict(strict=False) that only tolerates missing keys with the given prefixes."""
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and not k.startswith(allowed_missing))
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
           for k in state if k in own and state[k].shape != own[k].shape]
    if unexpected or missing or bad:
        parts = [f"unexpected keys {unexpected[:5]}" if unexpected else "",
                 f"missing keys {missing[:5]}" if missing else "", f"size mismatches {bad[:5]}" if bad else ""]
        raise CheckpointError(f"{where}: checkpoint does not match the model: " + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=False)


def load_extended(model: TransformerModel, state: dict, n_new: int, expected_n_words: int,
                  generator: torch.Generator | None = None) -> TransformerModel:
    """Load an HMR checkpoint (V_old words) into `model` built for the extended dictionary (expected_n_words)."""
    state = strip_module_prefix(state)
    v_old = state["embeddings.weight"].shape[0]
    if v_old + n_new != expected_n_words:
        raise CheckpointError(f"vocabulary extension mismatch: checkpoint has {v_old} words + n_new {n_new} = "
                              f"{v_old + n_new}, but the extended dictionary has {expected_n_words} words")
    if model.n_words != expected_n_words:
        raise CheckpointError(f"model has {model.n_words} words, the extended dictionary {expected_n_words}")
    _load_checked(model, extend_state_dict(state, n_new, model.dim, generator), FRESH_PREFIXES, "vocabulary extension")
    return model


def build_unmt_from_mlm(state: dict, cfg: ModelConfig, n_words: int, n_langs: int, redraw_lang_emb: bool = True,
                        n_new: int = 0, generator: torch.Generator | None = None):
    """Encoder and decoder as two independent copies of the MLM weights (reference §4.3); the decoder's
    cross-attention and layer_norm15 are fresh. redraw_lang_emb (relm's behaviour): both keep freshly drawn language
    embeddings instead of the MLM's. n_new > 0 extends the vocabulary here as well. Returns (encoder, decoder)."""
    state = strip_module_prefix(state)
    if n_new:
        state = extend_state_dict(state, n_new, cfg.dim, generator)
    v = state["embeddings.weight"].shape[0]
    if v != n_words:
        raise CheckpointError(f"MLM checkpoint has {v} words, the dictionary has {n_words}")
    models = []
    for is_decoder in (False, True):
        model = TransformerModel(cfg, n_words, n_langs, is_decoder)
        s = dict(state)
        if redraw_lang_emb or not hasattr(model, "lang_embeddings"):
            s.pop("lang_embeddings.weight", None)
        allowed = ("lang_embeddings.",) + (DECODER_ONLY_PREFIXES if is_decoder else ())
        _load_checked(model, s, allowed, "decoder from MLM" if is_decoder else "encoder from MLM")
        models.append(model)
    return models[0], models[1]
