"""What a system is: the systems table, and the settings of every training run composed from the workflow config.

A *system* is one way to get a UNMT model for an LMR-HMR pair, and one row of the results tables. Each goes through
two training stages of its own, an MLM stage and a UNMT stage; the RE-LM systems start their MLM stage from the HMR
MLM, which the `pretrain` stage trains once per HMR (or which is imported from a released checkpoint: the config's
`pretrained` block). To add a system: one entry in SYSTEMS (and its test in
tests/test_systems.py); the workflow, the config checks and the tables ask this module.

Config sections (relm.config dataclasses, layered; the later one wins):
  MLM stages   model -> mlm -> pretrain               (HMR pretraining)
               + extension.init                       (systems starting from the HMR MLM: its new rows)
               model -> mlm -> mlm_systems.<system>   (a system's MLM stage)
  UNMT stage   model -> mlm_systems.<system>.model -> unmt -> unmt_systems.<system>
The UNMT model takes the architecture of the system's MLM (e.g. its adapters), since it starts from it.
String settings may name the languages as {hmr} and {lmr} (metric names: "_valid_{lmr}_mlm_ppl").
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from relm.config import ExtensionConfig, MLMConfig, UNMTConfig, check, from_dict, merge
from relm.errors import ConfigError


@dataclass(frozen=True)
class Dictionary:
    """How a system turns text into ids: which vocabulary, and which BPE codes segment each language."""

    vocab: str  # "hmr": the HMR vocabulary | "ext": vocab.{lmr}-{hmr}-ext-by-N (RE-LM) | "joint": HMR + LMR jointly
    hmr_codes: bool  # the HMR side is segmented with the HMR-only codes (else with the joint codes, as the LMR side)
    reuses_hmr_train: bool = False  # the HMR train corpus binarized with the HMR vocabulary serves as is (its ids are
    #                                 the first ids of the extended vocabulary: no second 68M-sentence binarization)


DICTIONARIES = {
    "hmr": Dictionary(vocab="hmr", hmr_codes=True),
    # RE-LM (relm_unmt get_data_and_preprocess.sh): HMR text keeps codes.en, LMR text uses the joint codes
    "relm": Dictionary(vocab="ext", hmr_codes=True, reuses_hmr_train=True),
    # XLM (Lample & Conneau 2019): one joint BPE and vocabulary for both languages
    "xlm": Dictionary(vocab="joint", hmr_codes=False),
}


@dataclass(frozen=True)
class System:
    display: str  # name in tables and plots
    dictionary: str  # a key of DICTIONARIES
    init: str | None  # the MLM stage starts from: "pretrain" (the HMR MLM, vocabulary extended) | None (random)
    mlm_steps: tuple[str, ...]  # languages ("lmr", "hmr") the MLM stage trains on, in XLM's mlm_steps order; ()
    #                             = no MLM stage: UNMT starts from random weights
    trainable: str = "all"  # "all" | "adapters" (adapters, embeddings and output layer; RE-LM's --tune_adapters)
    control: bool = False  # not a system of the paper: a row of the tables only when it has results


SYSTEMS = {
    # the XLM baseline: a joint MLM from scratch on both languages, then UNMT
    "xlm": System("XLM", dictionary="xlm", init=None, mlm_steps=("lmr", "hmr")),
    # RE-LM: the HMR MLM, its vocabulary extended by the LMR's new tokens, fine-tuned on LMR + HMR
    "relm": System("RE-LM", dictionary="relm", init="pretrain", mlm_steps=("lmr", "hmr")),
    # RE-LM + adapters: the same start, fine-tuned on the LMR only with the pretrained weights frozen
    "relm_adapters": System("RE-LM + adapters", dictionary="relm", init="pretrain", mlm_steps=("lmr",),
                            trainable="adapters"),
    # a control, not in the paper: UNMT from random weights with XLM's joint vocabulary, no MLM stage; it tells how
    # much the pretrained start matters at all on a pair
    "scratch": System("Random start (control)", dictionary="xlm", init=None, mlm_steps=(), control=True),
}
DISPLAY = {name: s.display for name, s in SYSTEMS.items()}


def has_mlm_stage(system: str) -> bool:
    """Whether `system` trains an MLM stage (and its UNMT starts from it) or starts UNMT from random weights."""
    return bool(SYSTEMS[system].mlm_steps)


def stages(system: str) -> tuple[str, ...]:
    """The training runs of `system`, in order: ("mlm", "unmt"), or ("unmt",) without MLM stage."""
    return ("mlm", "unmt") if has_mlm_stage(system) else ("unmt",)


def split_pair(pair: str) -> tuple[str, str]:
    """'mk-en' -> ('mk', 'en'): pairs are named LMR-HMR, as the original names its data folders."""
    lmr, hmr = pair.split("-")
    return lmr, hmr


def directions(pair: str) -> list[str]:
    """Translation directions of a pair: HMR->LMR first, as in the paper's tables."""
    lmr, hmr = split_pair(pair)
    return [f"{hmr}-{lmr}", f"{lmr}-{hmr}"]


def codes_for(dictionary: str, lang: str, hmr: str) -> str:
    """"hmr" or "joint": the BPE codes that segment `lang` for a system with this dictionary."""
    return "hmr" if lang == hmr and DICTIONARIES[dictionary].hmr_codes else "joint"


def mlm_langs(system: str | None, pair: str | None, hmr: str) -> dict[str, list[str]]:
    """Languages of an MLM run: model langs, trained (mlm_steps) and evaluated ones. system None = pretrain."""
    if system is None:
        return {"langs": [hmr], "mlm_steps": [hmr], "eval_langs": [hmr]}
    lmr, _ = split_pair(pair)
    name = {"lmr": lmr, "hmr": hmr}
    return {"langs": [hmr, lmr], "mlm_steps": [name[k] for k in SYSTEMS[system].mlm_steps], "eval_langs": [lmr, hmr]}


def unmt_langs(pair: str) -> dict[str, list[str]]:
    """Languages and steps of UNMT (the same for every system): DAE on both, BT in both directions."""
    lmr, hmr = split_pair(pair)
    return {"langs": [hmr, lmr], "ae_steps": [hmr, lmr], "bt_steps": [f"{hmr}-{lmr}-{hmr}", f"{lmr}-{hmr}-{lmr}"]}


# --- settings of a run, composed from the workflow config ----------------------------------------------------------

def _fill(value, hmr: str, lmr: str):
    """Fill {hmr} / {lmr} in string settings (metric names depend on the pair)."""
    if isinstance(value, dict):
        return {k: _fill(v, hmr, lmr) for k, v in value.items()}
    if isinstance(value, str):
        return value.replace("{hmr}", hmr).replace("{lmr}", lmr)
    return value


def _run_defaults(config: dict) -> dict:
    return {"seed": config.get("seed", 0), "threads": train_threads(config)}


def seeds(config: dict) -> list[int]:
    """The training seeds every system runs with (config `seeds`; default: [seed]). Data, BPE, vocabularies and the
    HMR pretraining are shared by all seeds (they use `seed`); each system's MLM stage, UNMT, translations and scores
    are per seed."""
    return [int(v) for v in config.get("seeds") or [config.get("seed", 0)]]


def _with_seed(settings: dict, seed: int | None) -> dict:
    if seed is not None:
        settings["run"] = {**settings.get("run", {}), "seed": int(seed)}
    return settings


def train_threads(config: dict) -> int:
    """CPU threads of a training job (rule threads = torch threads). On a small CPU, two single-threaded jobs side
    by side beat one two-threaded job by far: small matrices do not parallelize and threads fight for cores."""
    return int(config.get("train_threads", 1))


def _checked(cls, settings: dict, layers: list[tuple[str, dict]]) -> dict:
    """Build and check the dataclass of `settings`; a ConfigError names the config section the bad value came from.
    layers: (key prefix, section) from the first layer to the last (the one that wins)."""
    try:
        check(from_dict(cls, settings))
    except ConfigError as e:
        if e.key is None:
            raise
        where = layers[-1][0] + e.key
        for prefix, section in reversed(layers):
            d = section
            for part in e.key.split("."):
                d = d.get(part) if isinstance(d, dict) else None
            if d is not None:
                where = prefix + e.key
                break
        raise ConfigError(str(e).replace(f"'{e.key}'", f"'{where}'", 1), where) from None
    return settings


def mlm_settings(config: dict, system: str | None = None, pair: str | None = None, seed: int | None = None) -> dict:
    """MLMConfig (as a dict) of `system`'s MLM stage on `pair`; system None = HMR pretraining. Checked by building
    the dataclass: an unknown key is an error naming it. seed (one of `seeds`) replaces run.seed."""
    hmr = config["hmr"]
    if system is not None and not has_mlm_stage(system):
        raise ConfigError(f"config key 'mlm_systems.{system}': system {system!r} has no MLM stage (its UNMT starts "
                          "from random weights)")
    if system is None:
        section, where = config.get("pretrain", {}), "pretrain."
    else:
        section, where = config.get("mlm_systems", {}).get(system, {}), f"mlm_systems.{system}."
    s = merge(merge({"model": config["model"]}, config.get("mlm", {})), section)
    s["run"] = merge(_run_defaults(config), s.get("run", {}))
    _with_seed(s, seed)
    s.update(mlm_langs(system, pair, hmr))
    s["trainable"] = SYSTEMS[system].trainable if system else "all"
    if system and SYSTEMS[system].init == "pretrain":
        s["extension_init"] = extension_settings(config)["init"]
    s = _fill(s, hmr, split_pair(pair)[0] if pair else hmr)
    return _checked(MLMConfig, s, [("", {"model": config["model"]}), ("mlm.", config.get("mlm", {})), (where, section)])


def extension_settings(config: dict) -> dict:
    """ExtensionConfig (as a dict) of the config's `extension` section: how the new rows of the RE-LM systems'
    vocabulary extension start (relm.model.newrows)."""
    section = config.get("extension", {})
    return _checked(ExtensionConfig, merge(dataclasses.asdict(ExtensionConfig()), section), [("extension.", section)])


def unmt_model(config: dict, system: str) -> dict:
    """The model of a system's UNMT run: that of its MLM stage (adapters included), before unmt's own overrides."""
    return merge(config["model"], config.get("mlm_systems", {}).get(system, {}).get("model", {}))


def unmt_settings(config: dict, system: str, pair: str, seed: int | None = None) -> dict:
    """UNMTConfig (as a dict) of `system` on `pair`, checked like mlm_settings."""
    hmr = config["hmr"]
    own = config.get("unmt_systems", {}).get(system, {})
    s = merge(merge({"model": unmt_model(config, system)}, config.get("unmt", {})), own)
    s["run"] = merge(_run_defaults(config), s.get("run", {}))
    _with_seed(s, seed)
    s.update(unmt_langs(pair))
    s = _fill(s, hmr, split_pair(pair)[0])
    mlm_model = {"model": config.get("mlm_systems", {}).get(system, {}).get("model", {})}
    return _checked(UNMTConfig, s, [("", {"model": config["model"]}), (f"mlm_systems.{system}.", mlm_model),
                                    ("unmt.", config.get("unmt", {})), (f"unmt_systems.{system}.", own)])
