"""JSON-schema checks with short errors: the key's path, the bad value and what is allowed.

Both the workflow config (config/schema.yaml, through dgkd_core.experiment.plan) and the run config
(dgkd_core.config.RUN_CONFIG_SCHEMA) are checked here, so each rule is written once, in a schema.
Types are strict: `true` is not an integer, `4.0` is not an integer, and numbers are finite.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import best_match

from dgkd_core.errors import ConfigError


def _is_integer(_checker, value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(_checker, value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


_STRICT_TYPES = Draft202012Validator.TYPE_CHECKER.redefine_many(
    {"integer": _is_integer, "number": _is_number})
StrictValidator = validators.extend(Draft202012Validator, type_checker=_STRICT_TYPES)


def _filling_defaults(base):
    """A validator class that also writes each missing property's `default` into the instance."""
    check_properties = base.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if validator.is_type(instance, "object"):
            for key, sub in props.items():
                if isinstance(sub, dict) and "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, props, instance, schema)

    return validators.extend(base, {"properties": properties})


_FillingValidator = _filling_defaults(StrictValidator)
# YAML 1.1 (PyYAML) reads 1e6 and 5e-4 as strings: only 1.0e6 and 5.0e-4 are floats.
_YAML11_FLOAT = re.compile(r"^[-+]?\d+(\.\d*)?[eE][-+]?\d+$")


def check(instance: Any, schema: dict, *, what: str, fill_defaults: bool = False) -> None:
    """Validate `instance` against `schema`; raise ConfigError with one short message.

    what: how the message names the document ("run-config", "config"). fill_defaults: write
    missing properties' defaults into `instance` (in place), as Snakemake's validate does."""
    check_size(instance, what)
    cls = _FillingValidator if fill_defaults else StrictValidator
    error = best_match(cls(schema).iter_errors(instance))
    if error is not None:
        raise ConfigError(describe(error, what))


# Far beyond any real config (the paper's workflow config holds under 2,000 values), far below
# what makes validation, copying or an error message slow: a loader's shared lists (YAML
# aliases) can make a small file stand for billions of values.
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 64


def check_size(instance: Any, what: str) -> None:
    """ConfigError if `instance`, with every shared list or mapping counted each time it is used,
    holds more than MAX_CONFIG_VALUES values or nests deeper than MAX_CONFIG_DEPTH. Iterative
    and stopping at the limit, so it takes milliseconds whatever the instance stands for."""
    top = instance.items() if isinstance(instance, dict) else [("", instance)]
    stack = [(value, 1, str(key)) for key, value in top]
    seen = 0
    while stack:
        node, depth, key = stack.pop()
        seen += 1
        where = f"{what} key '{key}'" if key else what
        if seen > MAX_CONFIG_VALUES:
            raise ConfigError(f"{where} expands to more than {MAX_CONFIG_VALUES} values (YAML "
                              "aliases re-using lists?); write the values out in full")
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{where} nests more than {MAX_CONFIG_DEPTH} levels deep")
        children = node.values() if isinstance(node, dict) else (
            node if isinstance(node, (list, tuple)) else ())
        stack.extend((child, depth + 1, key) for child in children)


def _number_text(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return value in ("true", "false", "True", "False")
    return True


def _allowed(values) -> str:
    return ", ".join("null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
                     for v in values)


# Keys that only a run's metrics.json holds: a config holding them was read from a metrics file,
# which is what Snakemake does with a target written after --configfile (it takes a list).
_METRICS_ONLY_KEYS = frozenset({"top1_last", "top1_best", "config_hash"})


def _guess(extra: list[str], known: list[str]) -> str:
    """' (did you mean ...?)' for unknown keys close to allowed ones, or the hint for a metrics
    file read as a config; '' otherwise."""
    if _METRICS_ONLY_KEYS & set(extra):
        return (" (a run's metrics.json read as a config: a target written after --configfile? "
                "write targets before it)")
    guesses = {key: close[0] for key in extra
               if (close := difflib.get_close_matches(str(key), known, n=1))}
    if len(extra) == 1 and guesses:
        return f" (did you mean {guesses[extra[0]]!r}?)"
    text = ", ".join(f"{theirs!r} -> {ours!r}" for theirs, ours in guesses.items())
    return f" (did you mean {text}?)" if guesses else ""


def describe(error, what: str) -> str:
    """One line for a jsonschema ValidationError: where, the bad value, what is allowed."""
    path = ".".join(str(p) for p in error.absolute_path)
    key = f"{what} key '{path}'" if path else what
    value, kind, rule = error.instance, error.validator, error.validator_value
    if kind == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(value) - set(known))
        where = f" under '{path}'" if path else ""
        return (f"unknown {what} key {', '.join(map(repr, extra))}{where}{_guess(extra, known)}; "
                f"allowed keys here: {', '.join(known) or 'none'}")
    if kind == "enum":
        hint = ""
        if isinstance(value, str) and value.lower() in ("true", "false") and (
                value.lower() == "true") in rule:
            # Snakemake's --config reads True/False as booleans, true/false as text
            hint = (f" (the text {value!r}, not a boolean: on Snakemake's command line write "
                    f"--config {path}={value.capitalize()})")
        return f"{key} is {value!r}, which is not one of {_allowed(rule)}{hint}"
    if kind == "type":
        hint = ""
        if isinstance(value, str) and _YAML11_FLOAT.match(value):
            mantissa, exp = re.split("[eE]", value)
            hint = (f" (YAML reads {value} as text: write {mantissa if '.' in mantissa else mantissa + '.0'}"
                    f"e{exp} for a number)")
        elif isinstance(value, str) and error.absolute_path and isinstance(
                error.absolute_path[-1], int) and _number_text(value):
            hint = (" (a list item given as text: Snakemake's --config reads list items as "
                    "text; give the list in a --configfile)")
        wanted = " or ".join(rule) if isinstance(rule, list) else rule
        return f"{key} is {value!r}, but it must be of type {wanted}{hint}"
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">",
              "exclusiveMaximum": "<"}
    if kind in bounds:
        return f"{key} is {value!r}, but it must be {bounds[kind]} {rule}"
    if kind == "required":
        return f"{key} lacks {error.message.split(' is a required')[0]}, which is required"
    return f"{key}: {error.message}"
