"""The systems table and the settings of each training run composed from the workflow config (relm/systems.py),
the workflow's config check (relm/workflow.py), and the profiles naming only rules that exist."""
import copy

import pytest
import yaml

from relm.config import MLMConfig, UNMTConfig, from_dict
from relm.errors import ConfigError
from relm.systems import DICTIONARIES, SYSTEMS, codes_for, mlm_langs, mlm_settings, seeds, unmt_settings
from relm.workflow import check_config
from workflow_utils import REPO, demo_config, snakemake

SCHEMA = REPO / "config" / "schema.yaml"
PROFILES = [REPO / "slurm" / "config.yaml", REPO / "profiles" / "local" / "config.yaml",
            REPO / "tests" / "slurm-profile" / "config.yaml"]


@pytest.mark.parametrize("system, dictionary, init, steps, trainable", [
    ("xlm", "xlm", None, ["mk", "en"], "all"),
    ("relm", "relm", "pretrain", ["mk", "en"], "all"),
    ("relm_adapters", "relm", "pretrain", ["mk"], "adapters"),
    ("scratch", "xlm", None, [], "all"),
])
def test_systems_table(system, dictionary, init, steps, trainable):
    s = SYSTEMS[system]
    assert (s.dictionary, s.init, s.trainable) == (dictionary, init, trainable)
    langs = mlm_langs(system, "mk-en", "en")
    assert langs["mlm_steps"] == steps and langs["eval_langs"] == ["mk", "en"] and langs["langs"] == ["en", "mk"]


@pytest.mark.parametrize("dictionary, lang, codes", [
    ("hmr", "en", "hmr"), ("relm", "en", "hmr"), ("relm", "mk", "joint"), ("xlm", "en", "joint"), ("xlm", "mk", "joint"),
])
def test_codes_per_dictionary(dictionary, lang, codes):
    """RE-LM keeps the HMR codes for the HMR side; XLM segments both languages with the joint codes."""
    assert codes_for(dictionary, lang, "en") == codes
    assert DICTIONARIES["relm"].reuses_hmr_train and not DICTIONARIES["xlm"].reuses_hmr_train


def test_pretrain_settings_layer_model_mlm_pretrain():
    cfg = demo_config()
    cfg["mlm"]["bptt"] = 48
    cfg["pretrain"]["bptt"] = 40
    s = mlm_settings(cfg)
    assert s["bptt"] == 40 and s["langs"] == s["mlm_steps"] == s["eval_langs"] == ["hx"]
    assert s["run"]["validation_metrics"] == "_valid_hx_mlm_ppl"  # {hmr} filled
    assert s["run"]["seed"] == cfg["seed"] and s["run"]["threads"] == cfg["train_threads"]
    assert from_dict(MLMConfig, s).model.dim == cfg["model"]["dim"]


def test_system_mlm_settings_fill_the_pair_and_keep_their_own_section():
    cfg = demo_config()
    relm = mlm_settings(cfg, "relm", "lx-hx")
    adapters = mlm_settings(cfg, "relm_adapters", "lx-hx")
    assert relm["run"]["max_steps"] == cfg["mlm_systems"]["relm"]["run"]["max_steps"]
    assert relm["run"]["stopping_criterion"] == "_valid_lx_mlm_ppl,3"
    assert relm["trainable"] == "all" and adapters["trainable"] == "adapters"
    assert adapters["model"]["adapter_size"] == 64 and relm["model"].get("adapter_size", 0) == 0


def test_unmt_model_follows_the_systems_mlm():
    """The UNMT run of RE-LM + adapters has the adapters its MLM stage trained; unmt_systems overrides per system."""
    cfg = demo_config()
    cfg["unmt_systems"] = {"xlm": {"lambda_bt": "0.5"}}
    ad, xlm = unmt_settings(cfg, "relm_adapters", "lx-hx"), unmt_settings(cfg, "xlm", "lx-hx")
    assert ad["model"]["adapter_size"] == 64 and xlm["model"].get("adapter_size", 0) == 0
    assert xlm["lambda_bt"] == "0.5" and ad.get("lambda_bt", "1") == "1"
    assert ad["bt_steps"] == ["hx-lx-hx", "lx-hx-lx"] and ad["ae_steps"] == ["hx", "lx"]
    assert from_dict(UNMTConfig, ad).run.stopping_criterion == "valid_lx-hx_mt_bleu,20"


@pytest.mark.parametrize("extra, expect", [({}, [0]), ({"seed": 7}, [7]), ({"seed": 7, "seeds": [3, 1]}, [3, 1])])
def test_seeds_default_to_the_seed_and_set_each_runs_seed(extra, expect):
    cfg = {**demo_config(), **extra}
    cfg["unmt"] = {**cfg["unmt"], "run": {**cfg["unmt"]["run"], "seed": 99}}  # a stage's own seed is replaced
    assert seeds(cfg) == expect
    for seed in seeds(cfg):
        assert mlm_settings(cfg, "relm", "lx-hx", seed)["run"]["seed"] == seed
        assert unmt_settings(cfg, "xlm", "lx-hx", seed)["run"]["seed"] == seed
    assert mlm_settings(cfg)["run"]["seed"] == cfg.get("seed", 0)  # HMR pretraining: shared by the seeds


def test_unknown_stage_key_is_named():
    cfg = demo_config()
    cfg["mlm_systems"]["relm"]["run"]["max_stepz"] = 3
    with pytest.raises(ValueError, match="mlm_systems.relm.run.max_stepz"):
        mlm_settings(cfg, "relm", "lx-hx")


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(finetune={"run": {}}), "'finetune' is now 'mlm_systems.relm'"),
    (lambda c: c.update(runtime={"xlm_mlm": 5}), "'runtime.xlm_mlm' is now 'runtime.mlm'"),
    (lambda c: c.update(systems=["xlm", "bert"]), "unknown system 'bert'"),
    (lambda c: c.update(seeds=[]), "config key 'seeds'"),
    (lambda c: c.update(seeds=[1, 1]), "config key 'seeds'"),
    (lambda c: c["mlm"].update(new_lang_emb="ones"), "config key 'mlm.new_lang_emb'"),
    (lambda c: c.update(extension={"init": "fasttext"}), "config key 'extension.init' must be one of random, mean"),
    (lambda c: c.update(extension={"init": "aligned", "aligned": {"dim": 0}}), "config key 'extension.aligned.dim'"),
    (lambda c: c.update(extension={"inits": "mean"}), "extension"),
    (lambda c: c["mlm"].update(extension_init="mean"), "mlm"),  # set by the workflow from extension.init only
    (lambda c: c["mlm_systems"].update(bert={}), "config key 'mlm_systems': unknown system 'bert'"),
    (lambda c: c["model"].update(dim="big"), "config key 'model.dim'"),
    (lambda c: c.update(pairs=["lx-en"]), "must end with the HMR language"),
])
def test_config_errors_are_one_line_naming_the_key(mutate, message):
    cfg = copy.deepcopy(demo_config())
    mutate(cfg)
    with pytest.raises(ConfigError, match=message) as e:
        check_config(cfg, SCHEMA)
    assert "\n" not in str(e.value)


def test_demo_and_paper_configs_pass_the_schema():
    for name in ("config.yaml", "paper.yaml", "tiny-lmr.yaml"):
        cfg = yaml.safe_load((REPO / "config" / name).read_text())
        try:
            check_config(cfg, SCHEMA)
        except ConfigError as e:  # the paper's corpora are local files the user provides
            assert ".path': file not found" in str(e), e


def test_tiny_lmr_config_is_the_papers_setting_in_miniature():
    """A rich HMR corpus and an LMR one 30-50x smaller, three seeds, and XLM's joint MLM given the RE-LM systems'
    total MLM budget (HMR pretraining + fine-tuning updates)."""
    cfg = yaml.safe_load((REPO / "config" / "tiny-lmr.yaml").read_text())
    gen = cfg["synthetic"]["tiny"]
    assert 30 <= gen["n_hmr"] / gen["n_lmr"] <= 50 and len(cfg["seeds"]) == 3
    budget = mlm_settings(cfg)["run"]["max_steps"] + mlm_settings(cfg, "relm", "lx-hx")["run"]["max_steps"]
    assert mlm_settings(cfg, "xlm", "lx-hx")["run"]["max_steps"] == budget


def test_profiles_name_only_existing_rules(tmp_path):
    rules = set(snakemake(tmp_path, "--list-rules").stdout.split())
    assert {"pretrain", "mlm", "unmt", "translate"} <= rules
    for profile in PROFILES:
        named = set(yaml.safe_load(profile.read_text()).get("set-resources", {}))
        assert named <= rules, f"{profile}: no rule named {sorted(named - rules)}"
        # the commented SITE example of the shipped profile too
        commented = [ln[2:] for ln in profile.read_text().splitlines() if ln.startswith("#   ") and ln.endswith(":")]
        assert {ln.strip().rstrip(":") for ln in commented if ln.startswith("  ") and " " not in ln.strip()} <= rules


def test_a_system_without_mlm_stage():
    """The random-start control trains no MLM stage: its UNMT settings build; settings for its MLM stage are an
    error naming the key."""
    cfg = {**demo_config(), "systems": ["xlm", "scratch"]}
    check_config(cfg, SCHEMA)
    assert from_dict(UNMTConfig, unmt_settings(cfg, "scratch", "lx-hx")).model.dim == cfg["model"]["dim"]
    cfg["mlm_systems"] = {**cfg["mlm_systems"], "scratch": {"run": {"max_steps": 10}}}
    with pytest.raises(ConfigError, match="'mlm_systems.scratch': system 'scratch' has no MLM stage"):
        check_config(cfg, SCHEMA)
