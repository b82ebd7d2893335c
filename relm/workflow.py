"""The checks the Snakemake workflow runs on its config before planning any job (rules/common.smk calls
`check_config`): the JSON schema, then what a schema cannot say. Every error is one line naming the config key."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

from relm.config import ModelConfig, TranslateConfig, check, from_dict
from relm.errors import ConfigError
from relm.systems import SYSTEMS, extension_settings, has_mlm_stage, mlm_settings, split_pair, unmt_settings

SPLITS = ("train", "valid", "test")
RENAMED = {  # old top-level key -> new one
    "finetune": "mlm_systems.relm",
    "adapters": "mlm_systems.relm_adapters",
    "xlm": "mlm_systems.xlm",
}


def _key(path) -> str:
    return ".".join(str(p) for p in path)


def check_schema(config: dict, schema_file: str | Path) -> None:
    """JSON-schema validation, reported as one line: the key and the first rule it breaks."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_file).read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        where = _key(error.absolute_path)
        raise ConfigError(f"config key '{where}': {error.message}" if where else f"config: {error.message}")


def check_config(config: dict, schema_file: str | Path) -> None:
    for old, new in RENAMED.items():
        if old in config:
            raise ConfigError(f"config key '{old}' is now '{new}' (the settings of that system's MLM stage)")
    if "runtime" in config:
        for old in ("finetune", "xlm_mlm"):
            if old in config["runtime"]:
                raise ConfigError(f"config key 'runtime.{old}' is now 'runtime.mlm' (every system's MLM stage)")
    check_schema(config, schema_file)
    hmr, pairs = config["hmr"], list(config["pairs"])
    for key in ("systems", "mlm_systems", "unmt_systems"):
        for system in config.get(key, []):
            if system not in SYSTEMS:
                raise ConfigError(f"config key '{key}': unknown system {system!r} (known: {', '.join(SYSTEMS)})")
    for pair in pairs:
        lmr, pair_hmr = split_pair(pair)
        if pair_hmr != hmr:
            raise ConfigError(f"config key 'pairs': pair {pair!r} must end with the HMR language '-{hmr}'")
        if lmr == hmr:
            raise ConfigError(f"config key 'pairs': pair {pair!r} has the HMR language on both sides")
    check_synthetic(config)
    check_data(config)
    check_pretrained(config)
    extension_settings(config)
    for system in config.get("mlm_systems", {}):
        if not has_mlm_stage(system):
            mlm_settings(config, system)  # raises: settings for an MLM stage the system does not have
    for pair in pairs:  # the stage sections must build their dataclasses (unknown keys are named)
        mlm_settings(config)
        for system in config["systems"]:
            if has_mlm_stage(system):
                mlm_settings(config, system, pair)
            unmt_settings(config, system, pair)
    check(from_dict(TranslateConfig, config.get("translate"), "translate."), "translate.")


def check_synthetic(config: dict) -> None:
    """Generator settings are the keyword arguments of relm.text.synth.generate_pair, with their types."""
    import inspect

    from relm.text.synth import generate_pair

    params = {k: p.default for k, p in inspect.signature(generate_pair).parameters.items()
              if k not in ("out_dir", "log", "hmr", "lmr")}
    for name, gen in config.get("synthetic", {}).items():
        if gen["hmr"] == gen["lmr"]:
            raise ConfigError(f"config key 'synthetic.{name}': hmr and lmr must differ")
        for key, value in gen.items():
            if key in ("hmr", "lmr"):
                continue
            if key not in params:
                raise ConfigError(f"config key 'synthetic.{name}.{key}' is unknown (allowed: hmr, lmr, "
                                  f"{', '.join(params)})")
            want = type(params[key])
            if isinstance(value, bool) or not isinstance(value, (int, float) if want is float else want) or value < 0:
                raise ConfigError(f"config key 'synthetic.{name}.{key}': expected a non-negative "
                                  f"{'number' if want is float else 'integer'}, got {value!r}")


def needed_corpora(config: dict) -> dict[str, list[str]]:
    """data.<group>.<split>.<lang> keys the workflow reads: the HMR corpora (the train corpus only with a released
    MLM), and per pair the LMR monolingual corpus and the valid/test sets in both languages."""
    hmr = config["hmr"]
    # the HMR valid/test sets only evaluate HMR pretraining, which a released MLM (`pretrained`) replaces
    needed = {hmr: [f"train.{hmr}"] if config.get("pretrained") else [f"{s}.{hmr}" for s in SPLITS]}
    for pair in config["pairs"]:
        lmr, _ = split_pair(pair)
        needed[pair] = [f"train.{lmr}"] + [f"{s}.{lang}" for s in ("valid", "test") for lang in (lmr, hmr)]
    return needed


def check_data(config: dict) -> None:
    for group, keys in needed_corpora(config).items():
        have = config["data"].get(group, {})
        for key in keys:
            if key not in have:
                raise ConfigError(f"config key 'data.{group}.{key}' is missing (a source for this corpus)")
        for key, src in have.items():
            if "synthetic" in src:
                gen = config.get("synthetic", {}).get(src["synthetic"])
                if gen is None:
                    raise ConfigError(f"config key 'data.{group}.{key}.synthetic': no generator "
                                      f"{src['synthetic']!r} under 'synthetic'")
                lang = key.split(".")[1]
                if lang not in (gen["hmr"], gen["lmr"]):
                    raise ConfigError(f"config key 'data.{group}.{key}': the synthetic pair {src['synthetic']!r} has "
                                      f"languages {gen['hmr']} and {gen['lmr']}")
            if "path" in src and not Path(src["path"]).is_file():
                raise ConfigError(f"config key 'data.{group}.{key}.path': file not found: {src['path']}")
            if "token_env" in src and not os.environ.get(src["token_env"]):
                raise ConfigError(f"config key 'data.{group}.{key}.token_env': environment variable "
                                  f"{src['token_env']} is not set (the token of this download)")
            if key.split(".")[0] != "train":
                for opt in ("dedup", "drop_blank"):
                    if src.get(opt):
                        raise ConfigError(f"config key 'data.{group}.{key}.{opt}': only for train corpora (it would "
                                          "break the line alignment of a parallel set)")


# --- starting from a released MLM (config `pretrained`) -----------------------------------------------------------

PRETRAINED_FILES = ("checkpoint", "codes", "vocab")
TRAINING_ONLY = ("dropout", "attention_dropout")  # model settings that are not the architecture of a checkpoint


def hmr_mlm_systems(config: dict) -> list[str]:
    """The systems of the config whose MLM stage starts from the HMR MLM (relm/systems.py: init "pretrain")."""
    return [s for s in config["systems"] if SYSTEMS[s].init == "pretrain"]


def _model_key(config: dict, system: str, name: str) -> str:
    """The config key a model setting of `system`'s MLM stage comes from (the last layer that sets it)."""
    for prefix, section in ((f"mlm_systems.{system}.", config.get("mlm_systems", {}).get(system, {})),
                            ("mlm.", config.get("mlm", {})), ("", config)):
        if name in (section.get("model") or {}):
            return f"{prefix}model.{name}"
    return f"model.{name}"


def released_model_keys(config: dict) -> dict:
    """{config key: value} of the architecture that every MLM stage starting from the HMR MLM asks for, e.g.
    {"model.dim": 1024, "mlm_systems.relm_adapters.model.adapter_size": 256, ...}: what `relm import-xlm
    --expect-model` checks the released checkpoint against (dropouts are training settings, not compared)."""
    out = {}
    for pair in config["pairs"]:
        for system in hmr_mlm_systems(config):
            model = from_dict(ModelConfig, mlm_settings(config, system, pair)["model"], "model.")
            for f in dataclasses.fields(ModelConfig):
                if f.name not in TRAINING_ONLY:
                    out.setdefault(_model_key(config, system, f.name), getattr(model, f.name))
    return out


def check_pretrained(config: dict) -> None:
    """The files of the `pretrained` block that are local must exist; the MLM stages that start from it must be
    post-norm, as every XLM / RE-LM checkpoint is (XLM src/model/transformer.py: TransformerModel.fwd). The rest
    (vocabulary = the checkpoint's dictionary, dimensions) needs the checkpoint: `relm import-xlm` checks it, in
    the first job that reads it (rule import_released)."""
    pretrained = config.get("pretrained")
    if not pretrained:
        return
    for kind in PRETRAINED_FILES:
        src = pretrained[kind]
        if "path" in src and not Path(src["path"]).is_file():
            raise ConfigError(f"config key 'pretrained.{kind}.path': file not found: {src['path']}")
    for key, value in released_model_keys(config).items():
        if key.endswith(".pre_norm") and value:
            raise ConfigError(f"config key '{key}' is true, but the released MLM (pretrained.checkpoint) is "
                              "post-norm, as every XLM / RE-LM checkpoint; set it to false")
