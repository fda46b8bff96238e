"""Loading the config: the YAML file, the `REGISTRY_GATEWAY__*` overrides, one-line errors.

The overrides are read by hand rather than through pydantic-settings: the README documents
each value as read as YAML (`[a, b]`, `null`, `~` typed as YAML types them), every variable
under the prefix as a key (an unknown one refused, like in the file), a value that is not
YAML refused naming the variable, and an explicit `environ` as the only environment
consulted; pydantic-settings 2.16 decodes values as JSON, skips unknown top-level names and
names the key, not the variable, in its errors (tried with pydantic-settings 2.16.3).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from service.config.base import NOT_YET_SUPPORTED, ConfigError
from service.config.gateway import GatewayConfig

ENV_CONFIG_PATH = "REGISTRY_GATEWAY_CONFIG"
ENV_OVERRIDE_PREFIX = "REGISTRY_GATEWAY__"


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, text in environ.items():
        if not name.startswith(ENV_OVERRIDE_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_OVERRIDE_PREFIX) :].split("__") if p]
        if not path:
            continue
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:  # an empty section (`server:` alone) reads as null
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"config error: {name}: {'.'.join(path)} is not a section")
            node = child
        # YAML scalars so that numbers and booleans arrive typed ("3" -> 3, "false" -> False).
        try:
            node[path[-1]] = yaml.safe_load(text) if text else text
        except yaml.YAMLError:
            raise ConfigError(f"config error: {name}: the value is not valid YAML") from None


# What an unknown key's name may look like to be echoed: the config's own keys are words.
# Anything else (digits, long, other characters) may be a secret pasted in the wrong place.
_KEY_NAME = re.compile(r"^[A-Za-z_-]{1,40}$")


def _problem(error: Mapping[str, Any]) -> tuple[str, str]:
    """(key path, message) of one pydantic error; never the input value (it may be a key
    pasted in clear), and an unknown key's name only when it looks like a config key."""
    loc = [str(p) for p in error["loc"]]
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
        if len(loc) == 1 and loc[0] in NOT_YET_SUPPORTED:
            message = "not supported by this version of the gateway yet"
        if loc and not _KEY_NAME.match(loc[-1]):
            loc[-1] = "<name not shown>"
            message = "unknown key (its name is not shown: it does not look like a config key)"
    return ".".join(loc) or "(top level)", message


def _problems(error: ValidationError) -> tuple[tuple[str, str], ...]:
    errors = error.errors(include_input=False, include_url=False)
    # A list whose only item was refused is also "too short after validation": an echo of
    # the item's own problem, not one more.
    echoes = {
        e["loc"]
        for e in errors
        if e["type"] == "too_short"
        and any(o["loc"][: len(e["loc"])] == e["loc"] and o["loc"] != e["loc"] for o in errors)
    }
    return tuple(_problem(e) for e in errors if e["loc"] not in echoes)


def _one_line(problems: tuple[tuple[str, str], ...]) -> str:
    key, message = problems[0]
    more = len(problems) - 1
    suffix = f" (and {more} more: `registry-gateway check-config` lists them)" if more else ""
    return f"config error: {key}: {message}{suffix}"


def from_mapping(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate a parsed config (plus env overrides) into a GatewayConfig."""
    data: dict[str, Any] = _deep_copy(raw)
    _apply_env_overrides(data, os.environ if environ is None else environ)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc)
        raise ConfigError(_one_line(problems), problems) from None


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read a YAML config file; raise ConfigError with a one-line message if unusable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config error: cannot read {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config error: {path} is not valid YAML{where}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config error: {path}: the top level must be a mapping of keys")
    return from_mapping(raw, environ)


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
