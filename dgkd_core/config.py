"""The resolved run config: defaults, validation and the hash that identifies a run.

A run config is a flat-ish dict (see docs/design.md, "Run config"). `resolve_run_config`
fills every default and validates every value, so that `metrics.json` records exactly what ran.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any

# Bump when a change in dgkd_core alters what training computes (losses, models, data path,
# optimiser, schedule). The workflow puts it in every training rule's params, so bumping it
# reruns every training job; Snakemake does not track imported modules by itself.
TRAINING_CODE_VERSION = "1"

METHODS = ("nokd", "kd", "takd", "dgkd", "sdgkd")
SCHEDULES = ("step", "constant", "cosine")
CONVENTIONS = ("paper", "released_code")
DEVICES = ("auto", "cpu", "cuda")
AUTO_BOOL = ("auto", True, False)

DEFAULT_RUN_CONFIG: dict[str, Any] = {
    "model": None,
    "method": "nokd",
    "seed": 0,
    "epochs": 160,
    "batch_size": 128,
    "eval_batch_size": 1024,
    "optimizer": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1.0e-4, "nesterov": False},
    "schedule": {"name": "step", "milestones": [0.5, 0.75], "gamma": 0.1},
    "loss": {
        "convention": "paper",
        "lam": 0.5,
        "temperature": 5.0,
        "keep_prob": None,
        "drop_teacher": False,
        "drop_num": 0,
    },
    "augment": True,
    "device": "auto",
    "fast": {"bf16": "auto", "channels_last": "auto", "cuda_graph": "auto"},
    "deterministic": True,
    # Seconds of wall time this job may use (e.g. the SLURM `runtime`); the trainer saves its
    # resume state and exits before running out. None: no budget.
    "time_budget_s": None,
}

# Keys that change how fast or where a run goes, not what it computes: left out of the hash.
_NON_SEMANTIC_KEYS = ("device", "time_budget_s", "eval_batch_size")


class ConfigError(ValueError):
    """A run config value is missing or outside its allowed range."""


def _merge(base: dict, override: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        where = f"{path}{key}"
        if key not in base:
            allowed = ", ".join(sorted(base))
            raise ConfigError(f"unknown run-config key '{where}'; allowed keys here: {allowed}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"run-config key '{where}' must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{where}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def resolve_run_config(partial: dict) -> dict:
    """Fill defaults into `partial` and validate; returns a new dict. Raises ConfigError."""
    cfg = _merge(DEFAULT_RUN_CONFIG, partial or {})
    from dgkd_core.losses import check_loss_settings
    from dgkd_core.models import available_models

    names = available_models()
    _require(cfg["model"] in names,
             f"run-config 'model' is {cfg['model']!r}; available models: {', '.join(names)}")
    _require(cfg["method"] in METHODS,
             f"run-config 'method' is {cfg['method']!r}; allowed: {', '.join(METHODS)}")
    _require(isinstance(cfg["seed"], int) and cfg["seed"] >= 0,
             f"run-config 'seed' must be a non-negative integer, got {cfg['seed']!r}")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        _require(isinstance(cfg[key], int) and not isinstance(cfg[key], bool) and cfg[key] >= 1,
                 f"run-config '{key}' must be an integer >= 1, got {cfg[key]!r}")
    opt = cfg["optimizer"]
    _require(_is_number(opt["lr"]) and opt["lr"] > 0,
             f"run-config 'optimizer.lr' must be a number > 0, got {opt['lr']!r}")
    _require(_is_number(opt["momentum"]) and 0 <= opt["momentum"] < 1,
             f"run-config 'optimizer.momentum' must be in [0, 1), got {opt['momentum']!r}")
    _require(_is_number(opt["weight_decay"]) and opt["weight_decay"] >= 0,
             f"run-config 'optimizer.weight_decay' must be >= 0, got {opt['weight_decay']!r}")
    _require(isinstance(opt["nesterov"], bool),
             f"run-config 'optimizer.nesterov' must be true or false, got {opt['nesterov']!r}")
    sched = cfg["schedule"]
    _require(sched["name"] in SCHEDULES,
             f"run-config 'schedule.name' is {sched['name']!r}; allowed: {', '.join(SCHEDULES)}")
    _require(isinstance(sched["milestones"], list)
             and all(_is_number(m) and 0 < m < 1 for m in sched["milestones"]),
             "run-config 'schedule.milestones' must be a list of fractions of the epochs in (0, 1),"
             f" got {sched['milestones']!r}")
    _require(_is_number(sched["gamma"]) and 0 < sched["gamma"] <= 1,
             f"run-config 'schedule.gamma' must be in (0, 1], got {sched['gamma']!r}")
    loss = cfg["loss"]
    try:
        check_loss_settings(loss["lam"], loss["temperature"], loss["keep_prob"],
                            loss["convention"], loss["drop_num"])
    except ValueError as err:
        raise ConfigError(f"run-config 'loss': {err}") from None
    _require(isinstance(loss["drop_teacher"], bool),
             f"run-config 'loss.drop_teacher' must be true or false, got {loss['drop_teacher']!r}")
    _require(isinstance(cfg["augment"], bool),
             f"run-config 'augment' must be true or false, got {cfg['augment']!r}")
    _require(cfg["device"] in DEVICES,
             f"run-config 'device' is {cfg['device']!r}; allowed: {', '.join(DEVICES)}")
    for key, value in cfg["fast"].items():
        _require(value in AUTO_BOOL,
                 f"run-config 'fast.{key}' is {value!r}; allowed: auto, true, false")
    _require(isinstance(cfg["deterministic"], bool),
             f"run-config 'deterministic' must be true or false, got {cfg['deterministic']!r}")
    budget = cfg["time_budget_s"]
    _require(budget is None or (_is_number(budget) and budget > 0),
             f"run-config 'time_budget_s' must be null or a number of seconds > 0, got {budget!r}")
    return cfg


def config_hash(cfg: dict) -> str:
    """sha256 (hex, 16 chars) of the settings that determine what a run computes."""
    semantic = {k: v for k, v in cfg.items() if k not in _NON_SEMANTIC_KEYS}
    semantic["training_code_version"] = TRAINING_CODE_VERSION
    blob = json.dumps(semantic, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_overrides(pairs: list[str]) -> dict:
    """Turn ['loss.lam=0.7', 'model=resnet8'] into a nested dict; values parsed as YAML."""
    import yaml

    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
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
