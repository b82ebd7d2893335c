"""relm checkpoints: writing, safe loading (weights_only), the checks of a starting checkpoint and rebuilding models.

Every reading of a relm checkpoint to start from goes through `load_start` (format, kind, architecture, dictionary)
and `load_weights` (names and shapes); `load_model` rebuilds the models of a checkpoint for inference.

Format ("relm-v1"): torch.save of plain python/tensor types only:
  {"format", "kind": "mlm" | "unmt", "model" (mlm) | "encoder" + "decoder" (unmt): state dicts with XLM key names,
   "model_config": asdict(ModelConfig), "n_langs", "langs", "words", "counts", "config", ...extra (training state)}.
"""
from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from relm.config import ModelConfig, from_dict
from relm.data.dictionary import Dictionary
from relm.errors import CheckpointError
from relm.files import atomic_torch_save
from relm.model.transformer import TransformerModel

FORMAT = "relm-v1"
MODEL_NAMES = {"mlm": ("model",), "unmt": ("encoder", "decoder")}


def safe_load(path, map_location="cpu"):
    """torch.load(weights_only=True); CheckpointError naming the file when missing, truncated, corrupt or unsafe."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip/pickle/EOF/RuntimeError all mean the same thing to the user
        hint = ""
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            hint = " (not a relm checkpoint? original XLM/RE-LM checkpoints must be converted with relm.model.xlm)"
        raise CheckpointError(f"cannot load checkpoint {path}: truncated, corrupt or unsafe file: "
                              f"{load_error_detail(e)}{hint}") from e


def load_error_detail(e: Exception) -> str:
    """The informative line of a torch.load error (torch's weights_only messages are long)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported global" in line or "Can only build" in line:
            return line.removeprefix("WeightsUnpickler error:").split(" Please use")[0].strip()  # not torch's advice
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def strip_module_prefix(state: dict) -> dict:
    """Remove the 'module.' prefix that DistributedDataParallel adds, when every key has it."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _cpu_state(model_or_state) -> dict:
    if isinstance(model_or_state, torch.nn.Module):
        model_or_state = getattr(model_or_state, "module", model_or_state)  # DDP
        model_or_state = getattr(model_or_state, "_orig_mod", model_or_state)  # torch.compile
        model_or_state = model_or_state.state_dict()
    state = strip_module_prefix(model_or_state)
    out, seen = {}, {}
    for k, v in state.items():  # keep tied tensors shared after moving to the CPU
        key = (v.data_ptr(), v.shape, v.dtype, v.device)
        out[k] = seen[key] if key in seen else seen.setdefault(key, v.detach().cpu())
    return out


def save_model(path, kind: str, models: dict, model_config, langs, words, counts, config, **extra) -> None:
    """Write a relm checkpoint atomically. models: {"model": m} for kind "mlm", {"encoder": e, "decoder": d} for "unmt"
    (modules or state dicts). `extra` (optimizer, step, epoch, rng, best_metrics, history, ...) is stored as is."""
    if kind not in MODEL_NAMES or set(models) != set(MODEL_NAMES[kind]):
        raise ValueError(f"kind {kind!r} needs models {MODEL_NAMES.get(kind)}, got {sorted(models)}")
    if dataclasses.is_dataclass(model_config):
        model_config = dataclasses.asdict(model_config)
    obj = {"format": FORMAT, "kind": kind}
    obj.update({name: _cpu_state(m) for name, m in models.items()})
    obj.update(model_config=dict(model_config), n_langs=len(langs), langs=list(langs), words=list(words),
               counts=[int(c) for c in counts], config=config)
    obj.update(extra)
    atomic_torch_save(obj, path)


ARCH_FIELDS = ("dim", "n_layers", "n_heads", "pre_norm", "gelu", "sinusoidal", "max_positions", "use_lang_emb")


def check_arch(ck_model_config: dict, cfg: ModelConfig, path) -> None:
    """The run's model config must describe the architecture of the checkpoint it starts from (adapters may be new)."""
    for f in ARCH_FIELDS:
        if f in ck_model_config and ck_model_config[f] != getattr(cfg, f):
            raise CheckpointError(f"{path} has model.{f} = {ck_model_config[f]!r} but the run config says "
                                  f"{getattr(cfg, f)!r}; set model.{f} to the checkpoint's value")
    a = int(ck_model_config.get("adapter_size", 0))
    if a and a != cfg.adapter_size:
        raise CheckpointError(f"{path} has adapters of size {a} but the run config says model.adapter_size = "
                              f"{cfg.adapter_size}")


def load_start(path, kinds=tuple(MODEL_NAMES), model_cfg: ModelConfig | None = None,
               dico: Dictionary | None = None) -> dict:
    """Read a relm checkpoint that a run or a command starts from, and check it once: relm format, kind in `kinds`,
    with `model_cfg` the run's architecture (check_arch), with `dico` the very same words.
    Returns the checkpoint dict; its state dicts are loaded with `load_weights`. Errors are one CheckpointError line
    naming the file."""
    ck = safe_load(path)
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        fmt = ck.get("format") if isinstance(ck, dict) else None
        raise CheckpointError(f"{path} is not a relm checkpoint (format {fmt!r}, expected {FORMAT!r})")
    kind = ck.get("kind")
    if kind not in kinds:
        want = " or ".join(repr(k) for k in kinds)
        raise CheckpointError(f"{path} is a {kind!r} checkpoint, but a {want} checkpoint is needed here"
                              if kind in MODEL_NAMES else f"{path}: unknown checkpoint kind {kind!r}")
    if model_cfg is not None:
        check_arch(ck["model_config"], model_cfg, path)
    if dico is not None and list(ck["words"]) != dico.words:
        n = len(ck["words"])
        hint = ("; its words are the first ones of that dictionary: a RE-LM vocabulary extension needs the "
                "extension sidecar" if n < len(dico) and dico.words[:n] == list(ck["words"]) else "")
        raise CheckpointError(f"{path} was trained with another dictionary ({n} words) than {dico.source} "
                              f"({len(dico)} words){hint}")
    return ck


def load_weights(model: TransformerModel, state: dict, where: str, fresh: tuple[str, ...] = ()) -> TransformerModel:
    """Load `state` into `model`: every key must match in name and shape, except that keys of the model starting
    with a prefix in `fresh` may be missing from `state` (they keep their initialisation)."""
    state = strip_module_prefix(state)
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and not k.startswith(fresh))
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
           for k in state if k in own and state[k].shape != own[k].shape]
    if unexpected or missing or bad:
        parts = [f"unexpected keys {unexpected[:5]}" if unexpected else "",
                 f"missing keys {missing[:5]}" if missing else "", f"size mismatches {bad[:5]}" if bad else ""]
        raise CheckpointError(f"{where}: checkpoint does not match the model (n_words={model.n_words}, "
                              f"n_langs={model.n_langs}, decoder={model.is_decoder}): "
                              + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=False)
    return model


def build_and_load(state: dict, cfg: ModelConfig, n_words: int, n_langs: int, is_decoder: bool, where: str = "",
                   device="cpu") -> TransformerModel:
    """A TransformerModel holding exactly the weights `state`."""
    return load_weights(TransformerModel(cfg, n_words, n_langs, is_decoder), state, where).to(device)


@dataclass
class LoadedModel:
    encoder: TransformerModel  # the MLM itself for kind "mlm"
    decoder: TransformerModel | None
    words: list[str]
    counts: list[int]
    langs: list[str]
    model_config: ModelConfig
    config: dict
    kind: str = "mlm"


def load_model(path, device="cpu", kinds=tuple(MODEL_NAMES)) -> LoadedModel:
    """Rebuild the model(s) of a relm checkpoint; models are returned in eval mode on `device`."""
    ck = load_start(path, kinds)
    kind = ck["kind"]
    cfg = from_dict(ModelConfig, ck["model_config"], "model.")
    n_words, n_langs = len(ck["words"]), int(ck["n_langs"])
    if kind == "mlm":
        enc = build_and_load(ck["model"], cfg, n_words, n_langs, False, f"{path} [model]", device)
        dec = None
    else:
        enc = build_and_load(ck["encoder"], cfg, n_words, n_langs, False, f"{path} [encoder]", device)
        dec = build_and_load(ck["decoder"], cfg, n_words, n_langs, True, f"{path} [decoder]", device).eval()
    return LoadedModel(enc.eval(), dec, list(ck["words"]), list(ck["counts"]), list(ck["langs"]), cfg,
                       ck.get("config") or {}, kind)
