"""Checking `NAME=VALUE` overrides against a pipeline's parameters before a run starts.

A compiled template (submit.py) or the built pipeline itself (run_local.py)
gives each parameter's type; `pipeline.PARAMETER_RULES` adds the ranges the
types cannot say (a threshold in [0, 1], at least one epoch). A bad override
is refused here, before anything leaves the machine, with a message that
names it, says what was expected and what was found.
"""

from __future__ import annotations

import math
import re

import yaml

from mnistkit import train_config
from pipelines.pipeline import EXCLUSIVE_MINIMUM, PARAMETER_PATTERNS, PARAMETER_RULES, check_combination

_TYPE_NAMES = {"STRING": "a string", "NUMBER_INTEGER": "an integer", "NUMBER_DOUBLE": "a number",
               "BOOLEAN": "true or false", "LIST": "a JSON list", "STRUCT": "a JSON object"}


class ParameterError(ValueError):
    """An override the pipeline cannot take."""


def pipeline_parameters(pipeline_func) -> dict[str, dict]:
    """The parameters of a built pipeline, exactly as template_parameters() reads them from its compiled YAML.

    Args:
      pipeline_func: What `@dsl.pipeline` returns; its pipeline spec is built in memory when it is defined.
    """
    from google.protobuf import json_format

    spec = json_format.MessageToDict(pipeline_func.pipeline_spec.root.input_definitions)
    return dict(spec.get("parameters", {}))


def template_parameters(template_path: str) -> dict[str, dict]:
    """The pipeline parameters of a compiled template: name -> {parameterType, defaultValue, ...}."""
    try:
        with open(template_path) as f:
            template = yaml.safe_load(f)
    except OSError as e:
        raise ParameterError(f"{template_path}: expected a compiled pipeline (python pipelines/compile.py), "
                             f"found none ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise ParameterError(f"{template_path}: expected a compiled pipeline YAML, found unparsable text") from e
    try:
        return dict(template["root"]["inputDefinitions"]["parameters"])
    except (KeyError, TypeError) as e:
        raise ParameterError(f"{template_path}: expected a KFP pipeline spec with root.inputDefinitions, "
                             "found none") from e


# Numbers as --help and JSON write them, as mnist-train's flags read them.
_INTEGER, _DOUBLE = train_config.INTEGER_TEXT, train_config.NUMBER_TEXT


def _convert(name: str, text: str, kind: str):
    expected = _TYPE_NAMES.get(kind, kind)
    try:
        if kind == "NUMBER_INTEGER":
            if not _INTEGER.fullmatch(text.strip()):
                raise ValueError
            return int(text.strip())
        if kind == "NUMBER_DOUBLE":
            if not _DOUBLE.fullmatch(text.strip()):
                raise ValueError
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            # 0 is "the recipe's" for some parameters: a value that is 0 only by rounding, or by its sign,
            # silently became the recipe's where mnist-train refuses it.
            if value == 0 and re.search(r"[1-9]", text.strip().lower().partition("e")[0]):
                raise ParameterError(f"parameter {name}: expected a number a double holds without rounding it to 0, "
                                     f"found {text!r}")
            if value == 0 and math.copysign(1.0, value) < 0:
                raise ParameterError(f"parameter {name}: expected a number, and 0 without a minus sign, "
                                     f"found {text!r}")
            return value
        if kind == "BOOLEAN":
            lowered = text.strip().lower()
            if lowered not in ("true", "false"):
                raise ValueError
            return lowered == "true"
        if kind in ("LIST", "STRUCT"):
            import json

            value = json.loads(text)
            if not isinstance(value, list if kind == "LIST" else dict):
                raise ValueError
            return value
        return text
    except ParameterError:
        raise
    except ValueError:
        raise ParameterError(f"parameter {name}: expected {expected}, found {text!r}") from None


# Vertex AI passes pipeline parameters as JSON numbers (doubles): larger integers would silently change.
MAX_INTEGER = 2**53


def _check_range(name: str, value) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
        raise ParameterError(f"parameter {name}: expected an integer of at most 2**53 in size (Vertex AI passes "
                             f"numbers as doubles), found {value}")
    if name in PARAMETER_PATTERNS:
        pattern, expected = PARAMETER_PATTERNS[name]
        if not re.fullmatch(pattern, value):
            raise ParameterError(f"parameter {name}: expected {expected}, found {value!r}")
        return
    low, high, choices = PARAMETER_RULES.get(name, (None, None, None))
    if choices is not None and value not in choices:
        raise ParameterError(f"parameter {name}: expected one of {', '.join(choices)}, found {value!r}")
    exclusive = name in EXCLUSIVE_MINIMUM
    too_low = low is not None and (value <= low if exclusive else value < low)
    if too_low or (high is not None and value > high):
        if low is not None and high is not None:
            expected = f"a value in {'(' if exclusive else '['}{low}, {high}]"
        elif low is not None:
            expected = f"above {low}" if exclusive else f"at least {low}"
        else:
            expected = f"at most {high}"
        raise ParameterError(f"parameter {name}: expected {expected}, found {value!r}")


def parse_overrides(overrides: list[str], parameters: dict[str, dict], replicas: int = 1) -> dict:
    """Turns ['NAME=VALUE', ...] into typed values the pipeline accepts.

    Args:
      overrides: each 'NAME=VALUE'; VALUE is read as the parameter's type.
      parameters: template_parameters() of the pipeline.
      replicas: the fewest replicas its training runs as (hardware.replicas_in).

    Raises:
      ParameterError: a malformed item, an unknown name, a repeated name, a
        value of the wrong type or out of range.
    """
    values = {}
    for item in overrides:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ParameterError(f"override {item!r}: expected NAME=VALUE")
        if name not in parameters:
            raise ParameterError(_unknown(name, parameters))
        if name in values:
            raise ParameterError(f"parameter {name}: given more than once")
        values[name] = _convert(name, text, parameters[name]["parameterType"])
    check_values(values, parameters, replicas)
    return values


def _unknown(name: str, parameters: dict) -> str:
    """The message for a parameter the pipeline does not take: the close matches first, then them all."""
    import difflib

    from mnistkit import train_config

    close = difflib.get_close_matches(name, parameters, n=3)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    if name in {f.name for f in train_config.fields()}:
        hint = ("it is an mnist-train setting the pipeline does not expose (hyper(..., pipeline=...) in "
                "mnistkit/train_config.py); ")
    return f"parameter {name}: unknown; {hint}the pipeline takes {', '.join(sorted(parameters))}"


def check_values(values: dict, parameters: dict[str, dict], replicas: int = 1) -> None:
    """Checks already-typed values (names, types, ranges); raises ParameterError."""
    for name, value in values.items():
        if name not in parameters:
            raise ParameterError(_unknown(name, parameters))
        kind = parameters[name]["parameterType"]
        ok = {"NUMBER_INTEGER": isinstance(value, int) and not isinstance(value, bool),
              "NUMBER_DOUBLE": isinstance(value, (int, float)) and not isinstance(value, bool),
              "BOOLEAN": isinstance(value, bool), "STRING": isinstance(value, str),
              "LIST": isinstance(value, list), "STRUCT": isinstance(value, dict)}.get(kind, True)
        if not ok:
            raise ParameterError(f"parameter {name}: expected {_TYPE_NAMES.get(kind, kind)}, found {value!r}")
        _check_range(name, value)
    missing = [n for n, p in parameters.items() if not p.get("isOptional") and n not in values]
    if missing:
        raise ParameterError(f"parameters {', '.join(missing)}: required by the pipeline, not given")
    defaults = {n: p["defaultValue"] for n, p in parameters.items() if "defaultValue" in p}
    try:
        check_combination({**defaults, **values}, replicas)
    except ValueError as e:
        raise ParameterError(str(e)) from None
