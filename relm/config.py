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

from relm.errors import ConfigError
from relm.files import atomic_write_text
from relm.train.metrics import config_metric_names, metric_spec, parse_stopping  # torch-free
from relm.train.schedule import LR_SCHEDULES, Lambda  # torch-free


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

    name: str = "adam"  # adam | adam_inverse_sqrt | adam_warmup_constant | adam_warmup_linear (relm.train.schedule)
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_updates: int = 4000
    warmup_init_lr: float = 1e-7
    decay_updates: int = 0  # adam_warmup_linear: the update where the rate reaches 0 (> warmup_updates)
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
    # Language embeddings that the init checkpoint lacks (the HMR MLM has none: it knows one language). Original:
    # "random" (XLM's N(0, dim^-0.5) draw) and frozen under trainable=adapters, which adds a fixed random vector to
    # every input of the frozen model. "zero" starts them at 0 (the pretrained model sees its inputs unchanged);
    # train_lang_emb also trains them in adapter mode.
    new_lang_emb: str = "random"  # random | zero
    train_lang_emb: bool = False  # trainable=adapters: train the language embeddings too (original: frozen)
    # Rows of the new LMR tokens of a vocabulary extension (the workflow sets it from `extension.init`): random (the
    # original's draw) or rows given to the run (--ext-rows, written by `relm vocab init-rows`; relm.model.newrows).
    extension_init: str = "random"  # random | mean | subword | aligned


@dataclass
class AlignedConfig:
    """extension.init aligned: skip-gram vectors per language (gensim Word2Vec) and the cross-lingual map."""

    dim: int = 100
    window: int = 5
    min_count: int = 3
    negative: int = 5
    epochs: int = 5
    max_lines: int = 1000000  # the first lines of each corpus the skip-gram reads (0: all)
    refine_iters: int = 5  # Procrustes on mutual nearest neighbours, after the fit on identical strings
    refine_top: int = 20000  # the most frequent tokens of each side searched for mutual nearest neighbours
    heldout: float = 0.2  # share of the identical strings kept out of the fit, to measure the map's precision


@dataclass
class ExtensionConfig:
    """How the new rows of RE-LM's vocabulary extension start (config `extension`; relm.model.newrows)."""

    init: str = "random"  # random (the original) | mean | subword | aligned
    aligned: AlignedConfig = field(default_factory=AlignedConfig)


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
    tokens_per_batch: int = 0  # also at most this many source tokens, padded, per batch (0: batch_size only)
    max_len_a: float = 1.5  # max output length = a * source length + b (XLM evaluation)
    max_len_b: int = 10
    device: str = "auto"  # auto (cuda when available) | cpu | cuda

    def cli_args(self) -> str:
        """The `relm translate` options that stand for these settings."""
        return (f"--beam-size {self.beam_size} --length-penalty {self.length_penalty} --batch-size {self.batch_size} "
                f"--tokens-per-batch {self.tokens_per_batch} --max-len-a {self.max_len_a} --max-len-b {self.max_len_b} --device {self.device}"
                + (" --early-stopping" if self.early_stopping else ""))


T = typing.TypeVar("T")


def _typed(value, hint, key: str):
    """`value` as type `hint` (int, float, str, bool, list[str]), or a ConfigError naming the key."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. lambda_bt: 1
    if typing.get_origin(hint) is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"config key '{key}': expected a list of strings, got {value!r}", key)
    if isinstance(value, hint) and not (isinstance(value, bool) and hint is not bool):
        return value
    raise ConfigError(f"config key '{key}': expected {TYPE_NAMES[hint]}, got {value!r}", key)


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """Build dataclass `cls` from a (possibly partial) dict; an unknown key or a value of the wrong type is a
    ConfigError naming the key."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config key '{where.rstrip('.') or '(top level)'}': expected a mapping, got {data!r}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {where + unknown[0]!r} (allowed: {', '.join(sorted(names))})",
                          where + unknown[0])
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            hint = hints[f.name]
            value = data[f.name]
            kwargs[f.name] = from_dict(hint, value, f"{where}{f.name}.") if dataclasses.is_dataclass(hint) \
                else _typed(value, hint, where + f.name)
    return cls(**kwargs)


# --- value checks (shared by `relm train` and the workflow's config check) --------------------------------------

def _rule(test, text):
    return test, text


GE0, GE1 = _rule(lambda v: v >= 0, ">= 0"), _rule(lambda v: v >= 1, ">= 1")
POS = _rule(lambda v: v > 0, "> 0")
UNIT = _rule(lambda v: 0 <= v < 1, "in [0, 1)")


EXTENSION_INITS = ("random", "mean", "subword", "aligned")  # relm.model.newrows


def _one_of(*names):
    return _rule(lambda v: v in names, "one of " + ", ".join(names))


RULES = {
    ModelConfig: {"dim": GE1, "n_layers": GE1, "n_heads": GE1, "dropout": UNIT, "attention_dropout": UNIT,
                  "max_positions": GE1, "adapter_size": GE0},
    OptimConfig: {"name": _one_of(*LR_SCHEDULES), "lr": POS, "beta1": UNIT, "beta2": UNIT,
                  "warmup_updates": GE0, "warmup_init_lr": GE0, "decay_updates": GE0, "weight_decay": GE0,
                  "clip_grad_norm": GE0},
    RunConfig: {"epoch_size": GE1, "max_epochs": GE1, "max_steps": GE0, "checkpoint_every": GE0, "log_every": GE0,
                "amp": _one_of("auto", "bf16", "fp16", "none"), "device": _one_of("auto", "cpu", "cuda"),
                "threads": GE0, "max_nan_steps": GE1},
    MLMConfig: {"trainable": _one_of("all", "adapters"), "new_lang_emb": _one_of("random", "zero"), "batch_size": GE1,
                "extension_init": _one_of(*EXTENSION_INITS),
                "word_pred": _rule(lambda v: 0 < v < 1, "in (0, 1)"), "sample_alpha": GE0},
    UNMTConfig: {"word_shuffle": GE0, "word_dropout": UNIT, "word_blank": UNIT, "batch_size": GE1, "max_len": GE1,
                 "max_batch_size": GE0, "beam_size": GE1,
                 "tokens_per_batch": _rule(lambda v: v >= 1 or v == -1, ">= 1, or -1 (batches of batch_size)")},
    ExtensionConfig: {"init": _one_of(*EXTENSION_INITS)},
    AlignedConfig: {"dim": GE1, "window": GE1, "min_count": GE1, "negative": GE0, "epochs": GE1, "max_lines": GE0,
                    "refine_iters": GE0, "refine_top": GE1, "heldout": UNIT},
    TranslateConfig: {"beam_size": GE1, "batch_size": GE1, "tokens_per_batch": GE0, "max_len_a": POS,
                      "max_len_b": GE0,
                      "device": _one_of("auto", "cpu", "cuda")},
}


def check(cfg, where: str = ""):
    """Check the values of a built config (ranges, names, schedules, what fields must agree on); a ConfigError
    names the first key that breaks a rule. Returns cfg."""

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check(value, f"{where}{f.name}.")
        elif f.name in RULES.get(type(cfg), {}):
            test, text = RULES[type(cfg)][f.name]
            if not test(value):
                raise ConfigError(f"config key '{where}{f.name}' must be {text}, got {value!r}", where + f.name)
        elif f.name.startswith("lambda_"):
            try:
                Lambda(value, f.name)
            except ValueError as e:
                raise ConfigError(f"config key '{where}{f.name}': {e}", where + f.name) from None

    def need(ok: bool, key: str, text: str):
        if not ok:
            raise ConfigError(f"config key '{where}{key}' {text}", where + key)

    if isinstance(cfg, OptimConfig) and cfg.name == "adam_warmup_linear":
        need(cfg.decay_updates > max(1, cfg.warmup_updates), "decay_updates",
             f"must be > warmup_updates ({cfg.warmup_updates}) for adam_warmup_linear, got {cfg.decay_updates}")
    if isinstance(cfg, ModelConfig):
        need(cfg.dim % cfg.n_heads == 0, "dim", f"({cfg.dim}) must be a multiple of n_heads ({cfg.n_heads})")
    if isinstance(cfg, MLMConfig):
        need(2 < cfg.bptt <= cfg.model.max_positions, "bptt",
             f"must be in (2, model.max_positions={cfg.model.max_positions}], got {cfg.bptt}")
        need(cfg.trainable != "adapters" or cfg.model.adapter_size > 0, "trainable",
             "is 'adapters' but model.adapter_size is 0")
        parts = cfg.word_mask_keep_rand.split(",")
        need(len(parts) == 3 and all(_is_number(p) and float(p) >= 0 for p in parts)
             and sum(map(float, parts)) > 0, "word_mask_keep_rand", "must be three non-negative numbers 'mask,keep,rand'")
    if isinstance(cfg, (MLMConfig, UNMTConfig)):
        names = config_metric_names(cfg)
        try:
            stop = parse_stopping(cfg.run.stopping_criterion)
        except ValueError:
            need(False, "run.stopping_criterion", f"must be 'metric,N' (N >= 0), got {cfg.run.stopping_criterion!r}")
        for key, metric in [("run.validation_metrics", metric_spec(m.strip())[0])
                            for m in cfg.run.validation_metrics.split(",") if m.strip()] + \
                           ([("run.stopping_criterion", stop[0])] if stop else []):
            need(metric in names, key, f"names {metric!r}, which this run does not compute "
                                       f"(it computes: {', '.join(names)})")
    if isinstance(cfg, UNMTConfig):
        need(cfg.max_len + 2 <= cfg.model.max_positions, "max_len",
             f"+ 2 (BOS, EOS) must be <= model.max_positions={cfg.model.max_positions}, got {cfg.max_len}")
        for step in cfg.bt_steps:
            p = step.split("-")
            need(len(p) == 3 and p[0] == p[2] != p[1], "bt_steps", f"entry {step!r} must be 'l1-l2-l1' with l1 != l2")
    return cfg


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


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
