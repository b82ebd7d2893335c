"""Config dataclasses and the JSON schema agree, and bad keys are named."""
import dataclasses
import subprocess
import sys

import pytest
import yaml

from relm import config as C
from relm.errors import ConfigError
from workflow_utils import REPO


def test_schema_matches_dataclasses():
    """config/schema.yaml's stage sections are exactly tools/make_schema_defs.py's output."""
    out = subprocess.run([sys.executable, str(REPO / "tools" / "make_schema_defs.py")], capture_output=True,
                         text=True, check=True).stdout
    expected = yaml.safe_load(out)["$defs"]
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())["$defs"]
    for name, definition in expected.items():
        assert schema[name] == definition, f"$defs.{name} is out of date: run tools/make_schema_defs.py"


def test_from_dict_nested_and_defaults():
    cfg = C.from_dict(C.MLMConfig, {"model": {"dim": 64}, "optim": {"lr": 1}, "langs": ["en"]})
    assert cfg.model.dim == 64 and cfg.model.n_layers == 6
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert C.from_dict(C.UNMTConfig, {}).optim.name == "adam_inverse_sqrt"


@pytest.mark.parametrize("data, key", [({"model": {"dimm": 1}}, "model.dimm"), ({"lr": 1}, "lr"),
                                        ({"run": {"seed": 1, "x": 2}}, "run.x")])
def test_unknown_key_is_named(data, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        C.from_dict(C.MLMConfig, data)


def test_yaml_round_trip(tmp_path):
    cfg = C.from_dict(C.UNMTConfig, {"langs": ["en", "mk"], "run": {"max_steps": 7}})
    C.dump_yaml(cfg, tmp_path / "c.yaml")
    again = C.from_dict(C.UNMTConfig, yaml.safe_load((tmp_path / "c.yaml").read_text()))
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


@pytest.mark.parametrize("cls, data, key", [
    (C.MLMConfig, {"model": {"dim": "64"}}, "model.dim"),
    (C.MLMConfig, {"model": {"n_layers": True}}, "model.n_layers"),
    (C.MLMConfig, {"langs": "en"}, "langs"),
    (C.MLMConfig, {"run": 3}, "run"),
    (C.UNMTConfig, {"word_dropout": "0.1"}, "word_dropout"),
])
def test_wrong_types_are_named(cls, data, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        C.from_dict(cls, data)


@pytest.mark.parametrize("cls, data, key", [
    (C.UNMTConfig, {"lambda_ae": "0:1,abc"}, "lambda_ae"),
    (C.UNMTConfig, {"lambda_bt": "1:0.5,0:1"}, "lambda_bt"),
    (C.MLMConfig, {"lambda_mlm": "x"}, "lambda_mlm"),
    (C.MLMConfig, {"optim": {"name": "sgd"}}, "optim.name"),
    (C.MLMConfig, {"run": {"amp": "fp8"}}, "run.amp"),
    (C.MLMConfig, {"run": {"device": "tpu"}}, "run.device"),
    (C.MLMConfig, {"model": {"dim": 100, "n_heads": 8}}, "model.dim"),
    (C.MLMConfig, {"model": {"dim": 0}}, "model.dim"),
    (C.MLMConfig, {"model": {"n_layers": 0}}, "model.n_layers"),
    (C.MLMConfig, {"model": {"dropout": 1.0}}, "model.dropout"),
    (C.MLMConfig, {"model": {"attention_dropout": -0.1}}, "model.attention_dropout"),
    (C.MLMConfig, {"batch_size": 0}, "batch_size"),
    (C.MLMConfig, {"bptt": 600}, "bptt"),
    (C.MLMConfig, {"optim": {"lr": 0}}, "optim.lr"),
    (C.MLMConfig, {"run": {"epoch_size": 0}}, "run.epoch_size"),
    (C.MLMConfig, {"trainable": "adapters"}, "trainable"),
    (C.MLMConfig, {"word_mask_keep_rand": "0.8,0.2"}, "word_mask_keep_rand"),
    (C.UNMTConfig, {"tokens_per_batch": 0}, "tokens_per_batch"),
    (C.UNMTConfig, {"beam_size": 0}, "beam_size"),
    (C.UNMTConfig, {"max_len": 511}, "max_len"),
    (C.UNMTConfig, {"bt_steps": ["en-mk-mk"]}, "bt_steps"),
    (C.TranslateConfig, {"max_len_a": 0}, "max_len_a"),
])
def test_values_that_cannot_work_are_named(cls, data, key):
    with pytest.raises(ConfigError, match=f"'{key}'") as e:
        C.check(C.from_dict(cls, data))
    assert e.value.key == key and "\n" not in str(e.value)


@pytest.mark.parametrize("cls", [C.MLMConfig, C.UNMTConfig, C.TranslateConfig])
def test_defaults_pass_the_checks(cls):
    C.check(cls())


@pytest.mark.parametrize("cls, data, key", [
    (C.MLMConfig, {"langs": ["en"], "run": {"stopping_criterion": "_valid_en_mlm_pl,3"}}, "run.stopping_criterion"),
    (C.MLMConfig, {"langs": ["en"], "run": {"stopping_criterion": "_valid_en_mlm_ppl"}}, "run.stopping_criterion"),
    (C.MLMConfig, {"langs": ["en"], "run": {"validation_metrics": "_valid_mk_mlm_ppl"}}, "run.validation_metrics"),
    (C.UNMTConfig, {"langs": ["en", "mk"], "bt_steps": ["en-mk-en", "mk-en-mk"],
                    "run": {"stopping_criterion": "valid_mk-en_mt_blue,5"}}, "run.stopping_criterion"),
    (C.UNMTConfig, {"langs": ["en", "mk"], "bt_steps": ["en-mk-en"], "eval_bleu": False,
                    "run": {"validation_metrics": "valid_en-mk_mt_bleu"}}, "run.validation_metrics"),
])
def test_metric_names_must_be_computed_by_the_run(cls, data, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        C.check(C.from_dict(cls, data))
    ok = {**data, "run": {"validation_metrics": "valid_en-mk_mt_ppl" if cls is C.UNMTConfig else "_valid_en_mlm_ppl"}}
    C.check(C.from_dict(cls, ok))
