"""Configuration as dataclasses: one per stage, defaults = the paper's (RE-LM / XLM) values.

A training run is fully described by one YAML file (`config.yaml` in its run directory), written by the
run itself from these dataclasses. The workflow passes each run its settings as JSON (`--settings`); the
same settings can be given by hand (`--config file.yaml`) when relm is used without Snakemake.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from relm.files import atomic_write_text


@dataclass
class ModelConfig:
    """Transformer shape. XLM / RE-LM: dim 1024, 6 layers, 8 heads, post-norm, GELU, learned positions."""

    dim: int = 1024
    n_layers: int = 6
    n_heads: int = 8
    dropout: float = 0.1
    attention_dropout: float = 0.1
    gelu: bool = True  # False = ReLU
    use_lang_emb: bool = True
    pre_norm: bool = False  # False = XLM's post-norm; True learns much faster on tiny CPU demos
    sinusoidal: bool = False  # XLM default: learned positions
    max_positions: int = 512
    adapter_size: int = 0  # 0 = no adapters; RE-LM used 256 with dim 1024


@dataclass
class OptimConfig:
    """Adam, or Adam with XLM's inverse-sqrt schedule (linear warmup from warmup_init_lr, then lr*sqrt(w/step))."""

    name: str = "adam"  # adam | adam_inverse_sqrt
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_updates: int = 4000
    warmup_init_lr: float = 1e-7
    weight_decay: float = 0.0
    clip_grad_norm: float = 5.0  # 0 = off


@dataclass
class RunConfig:
    """What every training run shares: seed, length, stopping, checkpointing, precision, devices."""

    seed: int = 0
    epoch_size: int = 200000  # sentences per epoch (XLM counts batch_size per step)
    max_epochs: int = 100
    max_steps: int = 0  # 0 = unlimited; optimizer updates
    stopping_criterion: str = ""  # "metric,N" ('_' prefix = smaller is better); empty = none
    validation_metrics: str = ""  # comma-separated; best-<metric> checkpoint for each
    checkpoint_every: int = 200  # updates between resume checkpoints (also written at every epoch end)
    log_every: int = 50
    amp: str = "auto"  # auto | bf16 | fp16 | none ; auto = bf16 on GPUs that support it, none on the CPU
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    max_nan_steps: int = 20  # consecutive non-finite losses before training stops with an error


@dataclass
class MLMConfig:
    """Masked-LM training (HMR pretraining, RE-LM fine-tuning, RE-LM + adapters, XLM baseline)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    langs: list[str] = field(default_factory=list)  # languages of the model; lang id = index in sorted(langs)
    mlm_steps: list[str] = field(default_factory=list)  # languages trained each iteration, e.g. [mk, en]
    eval_langs: list[str] = field(default_factory=list)  # languages evaluated (default: langs)
    trainable: str = "all"  # all | adapters (RE-LM + adapters: adapters, embeddings, positions, output layer)
    bptt: int = 256
    batch_size: int = 32
    word_pred: float = 0.15
    word_mask_keep_rand: str = "0.8,0.1,0.1"
    sample_alpha: float = 0.0  # > 0: frequency-based choice of masked positions
    lambda_mlm: str = "1"


@dataclass
class UNMTConfig:
    """Unsupervised NMT: denoising auto-encoding + online back-translation (XLM/RE-LM step 3)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(name="adam_inverse_sqrt", lr=1e-4, beta1=0.9, beta2=0.98)
    )
    run: RunConfig = field(default_factory=lambda: RunConfig(epoch_size=50000))
    langs: list[str] = field(default_factory=list)
    ae_steps: list[str] = field(default_factory=list)  # e.g. [en, mk]
    bt_steps: list[str] = field(default_factory=list)  # e.g. [en-mk-en, mk-en-mk]
    word_shuffle: float = 3.0
    word_dropout: float = 0.1
    word_blank: float = 0.1
    lambda_ae: str = "0:1,100000:0.1,300000:0"
    lambda_bt: str = "1"
    tokens_per_batch: int = 1000
    batch_size: int = 32  # nominal sentences per step for the epoch counter (XLM); with tokens_per_batch=-1 the batch size
    max_len: int = 100  # training sentences longer than this (BPE tokens) are dropped
    max_batch_size: int = 0
    eval_bleu: bool = True
    beam_size: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = False
    # Known deviations of the original code, kept as switches. Faithful values: True, True.
    bt_loss_unscaled: bool = True  # relm does not multiply the BT loss by lambda_bt (XLM later did)
    redraw_lang_emb: bool = True  # relm re-draws language embeddings at UNMT start


@dataclass
class TranslateConfig:
    """Generation settings for `relm translate` and the evaluation of test sets."""

    beam_size: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = False
    batch_size: int = 32
    max_len_a: float = 1.5  # max output length = a * source length + b (XLM evaluation)
    max_len_b: int = 10


T = typing.TypeVar("T")


def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """Build dataclass `cls` from a (possibly partial) dict; unknown keys are an error naming the key."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key {where + unknown[0]!r} (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value, f"{where}{f.name}.")
        elif hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # e.g. lambda_bt: 1
        kwargs[f.name] = value
    return cls(**kwargs)


def merge(base: dict, override: dict) -> dict:
    """Recursive dict update (override wins), used to layer stage settings over shared ones."""
    out = dict(base)
    for k, v in (override or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg, path: str | Path) -> None:
    """Write a resolved config atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg, sort_keys=False))


def load_settings(config_file: str | None = None, settings_json: str | None = None) -> dict:
    """Settings for a run: a YAML file and/or a JSON string (the JSON wins)."""
    data: dict = {}
    if config_file:
        data = yaml.safe_load(Path(config_file).read_text()) or {}
    if settings_json:
        data = merge(data, json.loads(settings_json))
    return data
