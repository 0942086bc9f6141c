"""The resolved run config: defaults, validation and the hash that identifies a run.

A run config is a flat-ish dict (see docs/design.md, "Run config"). `resolve_run_config`
fills every default and validates every value, so that `metrics.json` records exactly what ran.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from dgkd_core.method.losses import CONVENTIONS
from dgkd_core.method.models import INITS
from dgkd_core.method.registry import METHODS
from dgkd_core.schema import ConfigError, check

__all__ = ["DEFAULT_RUN_CONFIG", "RUN_CONFIG_SCHEMA", "TRAINING_CODE_VERSION",
           "config_hash", "deep_update", "parse_overrides", "resolve_run_config",
           "run_config_key_rows", "run_config_keys", "semantic_settings", "settings_schema"]

# Bump when a change in dgkd_core alters what training computes (losses, models, data path,
# optimiser, schedule). The workflow puts it in every training rule's params, so bumping it
# reruns every training job; Snakemake does not track imported modules by itself.
# 2: plain CNNs start from PyTorch's default initialisation, as in the released code (`init`).
TRAINING_CODE_VERSION = "2"

# The run config's one definition: every key, its type, range and default. The defaults are
# read from here (DEFAULT_RUN_CONFIG), the workflow's hyperparameter layers are checked against
# it (settings_schema), and so is every run config train() receives (resolve_run_config).
# Which models exist is the model registry's business (checked in resolve_run_config).
_FLAG = {"enum": ["auto", True, False], "default": "auto"}
RUN_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "model": {"type": ["string", "null"], "default": None,
                  "description": "a name from dgkd_core.method.models.available_models()"},
        "init": {"enum": list(INITS), "default": "auto",
                 "description": "the model's initialisation; auto: its family's, as in the "
                                "released code (dgkd_core.method.models.default_init), written into the "
                                "resolved config"},
        "method": {"enum": list(METHODS), "default": "nokd",
                   "description": "recorded with the run; the guides decide the loss"},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2 ** 63 - 1, "default": 0},
        "epochs": {"type": "integer", "minimum": 1, "default": 160},
        "batch_size": {"type": "integer", "minimum": 1, "default": 128},
        "eval_batch_size": {"type": "integer", "minimum": 1, "default": 1024},
        "optimizer": {"type": "object", "additionalProperties": False, "default": {},
                      "properties": {
            "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.1},
            "momentum": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.9},
            "weight_decay": {"type": "number", "minimum": 0, "default": 1.0e-4},
            "nesterov": {"type": "boolean", "default": False}}},
        "schedule": {"type": "object", "additionalProperties": False, "default": {},
                     "properties": {
            "name": {"enum": ["step", "constant", "cosine"], "default": "step"},
            "milestones": {"type": "array", "default": [0.5, 0.75],
                           "description": "fractions of the epochs",
                           "items": {"type": "number", "exclusiveMinimum": 0,
                                     "exclusiveMaximum": 1}},
            "gamma": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.1}}},
        "loss": {"type": "object", "additionalProperties": False, "default": {}, "properties": {
            "convention": {"enum": list(CONVENTIONS), "default": "paper"},
            "lam": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
            "temperature": {"type": "number", "exclusiveMinimum": 0, "default": 5.0},
            "keep_prob": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1,
                          "default": None, "description": "set: stochastic DGKD"},
            "drop_teacher": {"type": "boolean", "default": False},
            "drop_num": {"type": "integer", "minimum": 0, "default": 0}}},
        "augment": {"type": "boolean", "default": True},
        "validation_images": {
            "type": "integer", "minimum": 0, "default": 0,
            "description": "training images held out as a validation set (seeded, the same "
                           "number per class; val_top1 per epoch, best_val_epoch in metrics.json)"},
        "sync_bn": {"type": "boolean", "default": False,
                    "description": "data-parallel runs: BatchNorm over the global batch "
                                   "(SyncBatchNorm) instead of each rank's share of it"},
        "normalize": {
            "type": ["object", "null"], "default": None, "additionalProperties": False,
            "required": ["mean", "std"],
            "description": "per-channel mean and std (0-1 scale) in place of the dataset's own "
                           "train-split statistics (null); the released code uses CIFAR-100's",
            "properties": {
                "mean": {"type": "array", "minItems": 3, "maxItems": 3,
                         "items": {"type": "number", "minimum": 0, "maximum": 1}},
                "std": {"type": "array", "minItems": 3, "maxItems": 3,
                        "items": {"type": "number", "exclusiveMinimum": 0}}}},
        "device": {"enum": ["auto", "cpu", "cuda"], "default": "auto"},
        "data_workers": {"type": ["integer", "null"], "minimum": 0, "default": None,
                         "description": "processes decoding a streamed dataset's images, per "
                                        "rank (0: in the training process); null: up to 4"},
        "fast": {"type": "object", "additionalProperties": False, "default": {}, "properties": {
            "bf16": _FLAG, "channels_last": _FLAG, "cuda_graph": _FLAG,
            # Folded BN (dgkd_core.guides.prepared): auto is on CUDA only, so that CPU results
            # stay what earlier versions computed; true folds on the CPU too.
            "fold_guides": _FLAG}},
        "deterministic": {"type": "boolean", "default": True},
        # Seconds of wall time this job may use (e.g. the SLURM `runtime`); the trainer saves its
        # resume state and exits before running out. None: no budget.
        "time_budget_s": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                          "description": "seconds of wall time; null: no budget"},
        "logging": {"type": "object", "additionalProperties": False, "default": {},
                    "properties": {
            "tensorboard": {"type": "boolean", "default": False,
                            "description": "per-epoch scalars for TensorBoard (needs the "
                                           "tensorboard extra)"},
            "tensorboard_dir": {"type": ["string", "null"], "minLength": 1, "default": None,
                                "description": "their folder; null: <out_dir>/tensorboard"},
            "wandb": {"type": "boolean", "default": False,
                      "description": "track the run in Weights & Biases (needs the wandb extra)"},
            "wandb_project": {"type": "string", "minLength": 1, "default": "dgkd",
                              "description": "its W&B project"},
            "wandb_mode": {"enum": ["offline", "online"], "default": "offline",
                           "description": "offline: under <out_dir>/wandb, for `wandb sync`"}}},
    },
}
# Set by the workflow for each run, so not part of a hyperparameter layer (settings_schema);
# dotted for a nested key.
_SET_BY_WORKFLOW = ("model", "method", "seed", "time_budget_s", "logging.tensorboard_dir")


def _defaults(schema: dict) -> Any:
    if schema.get("type") == "object" and "properties" in schema:
        return {k: _defaults(sub) for k, sub in schema["properties"].items()}
    return copy.deepcopy(schema.get("default"))


def _without_defaults(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_defaults(v) for k, v in schema.items() if k != "default"}
    return schema


DEFAULT_RUN_CONFIG: dict[str, Any] = _defaults(RUN_CONFIG_SCHEMA)

# Keys that change how fast or where a run goes, or what it reports, not what it computes: left
# out of the hash (a resume state stays valid) and of the workflow's rerun params.
_NON_SEMANTIC_KEYS = ("device", "time_budget_s", "eval_batch_size", "logging", "data_workers")


def settings_schema() -> dict:
    """The schema of one hyperparameter layer of the workflow config: the run config's keys but
    those the workflow sets per run, every key optional, no defaults (layers must not fill them)."""
    schema = _without_defaults(RUN_CONFIG_SCHEMA)
    for key in _SET_BY_WORKFLOW:
        *parents, leaf = key.split(".")
        node = schema
        for part in parents:
            node = node["properties"][part]
        del node["properties"][leaf]
    return schema


def run_config_keys(schema: dict | None = None, prefix: str = "") -> list[tuple[str, dict]]:
    """Every settable key of the run config as (dotted key, its schema), in the schema's order:
    nested objects are walked (`optimizer.lr`), anything else is one key (`normalize`)."""
    schema = RUN_CONFIG_SCHEMA if schema is None else schema
    out: list[tuple[str, dict]] = []
    for key, sub in schema["properties"].items():
        if sub.get("type") == "object" and "properties" in sub:
            out.extend(run_config_keys(sub, f"{prefix}{key}."))
        else:
            out.append((prefix + key, sub))
    return out


def _value_text(value) -> str:
    """A value as YAML writes it: null, true, [0.5, 0.75]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    return str(value)


def _range_text(leaf: dict) -> str:
    """A schema's bounds: `in [0, 1]`, `in (0, 1)`, `>= 1`, `> 0`, or ''."""
    low = next(((f"{b}", leaf[k]) for k, b in (("minimum", "["), ("exclusiveMinimum", "("))
                if k in leaf), None)
    high = next(((f"{b}", leaf[k]) for k, b in (("maximum", "]"), ("exclusiveMaximum", ")"))
                 if k in leaf), None)
    if low and high:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{'<=' if high[0] == ']' else '<'} {high[1]}"
    return ""


def _allowed_text(leaf: dict) -> str:
    """What a run-config key allows, from its schema, then its description."""
    if "enum" in leaf:
        text = "one of " + ", ".join(_value_text(v) for v in leaf["enum"])
    else:
        types = leaf["type"] if isinstance(leaf["type"], list) else [leaf["type"]]
        kinds = []
        for kind in (t for t in types if t != "null"):
            if kind == "array":
                items = leaf.get("items", {})
                count = (f"{leaf['minItems']} " if leaf.get("minItems") is not None
                         and leaf.get("minItems") == leaf.get("maxItems") else "")
                kind = f"list of {count}{items.get('type', 'value')}s {_range_text(items)}"
            elif kind == "object":
                kind = "mapping {" + ", ".join(leaf.get("properties", {})) + "}"
            else:
                kind = f"{kind} {_range_text(leaf)}"
            kinds.append(kind.strip())
        text = " or ".join(kinds + (["null"] if "null" in types else []))
    return text + (f"; {leaf['description']}" if leaf.get("description") else "")


def run_config_key_rows() -> list[tuple[str, str, str]]:
    """Every run-config key as help text: (dotted key, its default as YAML writes it, what it
    allows and its description), read from RUN_CONFIG_SCHEMA (`train --help`)."""
    return [(key, _value_text(leaf.get("default")), _allowed_text(leaf))
            for key, leaf in run_config_keys()]


def _complete(schema: dict, value: Any) -> Any:
    """`value` with every missing key filled from `schema`'s defaults, in the schema's order."""
    if schema.get("type") == "object" and "properties" in schema:
        value = value or {}
        return {k: _complete(sub, value[k]) if k in value else _defaults(sub)
                for k, sub in schema["properties"].items()}
    return copy.deepcopy(value)


def resolve_run_config(partial: dict) -> dict:
    """Fill defaults into `partial` and validate; returns a new dict. Raises ConfigError."""
    if partial is not None and not isinstance(partial, dict):
        raise ConfigError(f"a run config must be a mapping of keys to values, got "
                          f"{type(partial).__name__} {partial!r}")
    check(partial or {}, RUN_CONFIG_SCHEMA, what="run-config")
    cfg = _complete(RUN_CONFIG_SCHEMA, partial)
    from dgkd_core.method.models import available_models, default_init

    names = available_models()
    if cfg["model"] not in names:
        raise ConfigError(f"run-config 'model' is {cfg['model']!r}; available models: "
                          f"{', '.join(names)}")
    loss = cfg["loss"]
    if loss["keep_prob"] is not None and loss["drop_num"] > 0:
        raise ConfigError(f"run-config 'loss.keep_prob' ({loss['keep_prob']}) and "
                          f"'loss.drop_num' ({loss['drop_num']}) are both set; set one: keep_prob "
                          "drops each guide at random (the paper), drop_num exactly that many "
                          "per batch (the released code)")
    if loss["drop_num"] > 0 and not loss["drop_teacher"]:
        raise ConfigError("run-config 'loss.drop_num' drops guides among all of them, teacher "
                          "included (as the released code does): set loss.drop_teacher: true")
    if cfg["init"] == "auto":  # metrics.json then says which initialisation ran
        cfg["init"] = default_init(cfg["model"])
    return cfg


def semantic_settings(cfg: dict) -> dict:
    """The settings that determine what a run computes: `cfg` without those that change only how
    fast or where it runs (device, time budget, evaluation batch size, data workers) or what it
    logs (logging). They identify a run in its hash and in the workflow's rerun params."""
    # validation_images: 0, the default, computes what a config without the key computed: left
    # out, so that runs recorded before the key existed keep their hash.
    return {k: v for k, v in cfg.items() if k not in _NON_SEMANTIC_KEYS
            and not (k == "validation_images" and not v)}


def config_hash(cfg: dict) -> str:
    """sha256 (hex, 16 chars) of the settings that determine what a run computes."""
    semantic = semantic_settings(cfg)
    semantic["training_code_version"] = TRAINING_CODE_VERSION
    blob = json.dumps(semantic, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_overrides(pairs: list[str]) -> dict:
    """Turn ['loss.lam=0.7', 'model=resnet8'] into a nested dict; values parsed as YAML."""
    from dgkd_core import io

    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {pair!r}: the key has an empty part; write key.sub=value")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {pair!r}: '{where}' is already set to {node!r}, which "
                                  "has no keys; set one or the other")
        node[parts[-1]] = io.load_yaml_text(raw, f"--set {key.strip()}=...: the value")
    return out


def deep_update(base: dict, override: dict) -> dict:
    """Recursive dict update (returns a new dict); used to layer --set over a YAML file."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
