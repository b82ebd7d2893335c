"""Config dataclasses and the JSON schema agree, and bad keys are named."""
import dataclasses
import subprocess
import sys

import pytest
import yaml

from relm import config as C
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
