"""RE-LM vocabulary extension of model weights, and building the UNMT encoder/decoder from an MLM.

The extended dictionary keeps the pretrained ids 0..V_old-1 and appends the n_new LMR tokens (relm.text.vocab), so
the extension is an identity copy of the old rows plus new rows (RE-LM src/model/__init__.py: modify_params). In RE-LM
the embedding matrix is tied to the output layer and the output layer's Uniform(-1/dim, 1/dim) draw is loaded last, so
that is the effective init of the new rows; the new output-bias entries are 0. Language embeddings and adapters that
are not in the checkpoint keep their fresh initialisation (RE-LM loads with strict=False).
"""
from __future__ import annotations

import json

import torch

from relm.config import ModelConfig
from relm.data.dictionary import Dictionary
from relm.errors import CheckpointError
from relm.model.checkpoint import load_weights, strip_module_prefix
from relm.model.transformer import TransformerModel

DECODER_ONLY_PREFIXES = ("encoder_attn.", "layer_norm15.")
FRESH_PREFIXES = ("lang_embeddings.", "adapters_")  # may be missing from a checkpoint: keep the fresh init


def extension_size(extension: str, words: list[str], dico: Dictionary, path) -> int:
    """n_new of the RE-LM extension sidecar `extension`, checked against the words of the checkpoint `path` (which
    must be the first words of `dico`) and the extended dictionary `dico`."""
    with open(extension, encoding="utf-8") as f:
        side = json.load(f)
    n_new = int(side["n_new"])
    if len(words) + n_new != len(dico):
        raise CheckpointError(f"vocabulary extension mismatch: {path} has {len(words)} words, {extension} adds "
                              f"n_new={n_new}, but the dictionary {dico.source} has {len(dico)} words "
                              f"(expected {len(words) + n_new})")
    for key, v, where in (("n_words_hmr", len(words), f"checkpoint {path}"),
                          ("n_words_ext", len(dico), f"dictionary {dico.source}")):
        if key in side and int(side[key]) != v:
            raise CheckpointError(f"{extension}: {key} = {side[key]} but {where} has {v} words")
    try:
        Dictionary.from_words(list(words)).check_prefix_of(dico)
    except ValueError as e:
        raise CheckpointError(f"the words of {path} are not the first words of {dico.source}: {e}") from None
    return n_new


def extend_state_dict(state: dict, n_new: int, dim: int, generator: torch.Generator | None = None,
                      new_rows: torch.Tensor | None = None) -> dict:
    """Copy of `state` with n_new rows appended: token embeddings (= tied output matrix) ~ U(-1/dim, 1/dim), or
    `new_rows` (extension.init other than random, relm.model.newrows), bias 0."""
    state = strip_module_prefix(state)
    old = state["embeddings.weight"]
    v_old, d = old.shape
    if d != dim:
        raise CheckpointError(f"checkpoint embeddings have dim {d}, the model has dim {dim}")
    if n_new < 0:
        raise ValueError(f"n_new must be >= 0, got {n_new}")
    if new_rows is None:  # given rows were checked against n_new x dim where they were read (newrows.read_rows)
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


def load_extended(model: TransformerModel, state: dict, n_new: int, expected_n_words: int,
                  generator: torch.Generator | None = None, new_rows: torch.Tensor | None = None) -> TransformerModel:
    """Load an HMR checkpoint (V_old words) into `model` built for the extended dictionary (expected_n_words)."""
    state = strip_module_prefix(state)
    v_old = state["embeddings.weight"].shape[0]
    if v_old + n_new != expected_n_words:
        raise CheckpointError(f"vocabulary extension mismatch: checkpoint has {v_old} words + n_new {n_new} = "
                              f"{v_old + n_new}, but the extended dictionary has {expected_n_words} words")
    if model.n_words != expected_n_words:
        raise CheckpointError(f"model has {model.n_words} words, the extended dictionary {expected_n_words}")
    return load_weights(model, extend_state_dict(state, n_new, model.dim, generator, new_rows), "vocabulary extension",
                        FRESH_PREFIXES)


def build_unmt_from_mlm(state: dict, cfg: ModelConfig, n_words: int, n_langs: int, redraw_lang_emb: bool = True):
    """Encoder and decoder as two independent copies of the MLM weights (XLM src/model/__init__.py: build_model with
    two reload paths); the decoder's cross-attention and layer_norm15 are fresh. redraw_lang_emb (RE-LM's
    build_model): both keep freshly drawn language embeddings instead of the MLM's. Returns (encoder, decoder)."""
    state = strip_module_prefix(state)
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
        load_weights(model, s, "decoder from MLM" if is_decoder else "encoder from MLM", allowed)
        models.append(model)
    return models[0], models[1]
