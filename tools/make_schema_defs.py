"""Print the JSON-schema `$defs` for the stage sections of config/schema.yaml from relm.config's dataclasses.

The schema is a checked-in file; this script helps keep it in step after a dataclass gains a field
(tests/test_config.py fails when they disagree).
"""
import dataclasses
import typing

import yaml

from relm import config as C

TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def props(cls, skip=()):
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        h = hints[f.name]
        if dataclasses.is_dataclass(h):
            out[f.name] = {"$ref": f"#/$defs/{h.__name__.replace('Config', '').lower()}"}
        elif typing.get_origin(h) is list:
            out[f.name] = {"type": "array", "items": {"type": "string"}}
        else:
            out[f.name] = {"type": TYPES[h]}
    return {"type": "object", "additionalProperties": False, "properties": out}


WORKFLOW_SET = ("langs", "mlm_steps", "eval_langs", "trainable", "ae_steps", "bt_steps", "extension_init")
defs = {
    "model": props(C.ModelConfig),
    "optim": props(C.OptimConfig),
    "run": props(C.RunConfig),
    "mlm_stage": props(C.MLMConfig, skip=WORKFLOW_SET),
    "unmt_stage": props(C.UNMTConfig, skip=WORKFLOW_SET),
    "translate": props(C.TranslateConfig),
    "extension": props(C.ExtensionConfig),
    "aligned": props(C.AlignedConfig),
}
print(yaml.safe_dump({"$defs": defs}, sort_keys=False))
