"""What every part of the config shares: the base model, the error, listen addresses, RPC names."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, WithJsonSchema

from service import catalog

# The RPCs, from the contract's descriptor (service/catalog.py); re-exported here because
# the config names them (`operations:`).
ECR_OPERATIONS = catalog.ECR_OPERATIONS
SLICE_OPERATIONS = catalog.SLICE_OPERATIONS
OPERATIONS = catalog.RPCS
WRITE_OPERATIONS = catalog.WRITES


def _known_operation(name: str) -> str:
    if name not in OPERATIONS:
        raise ValueError(f"unknown operation {name!r}; expected one of {', '.join(OPERATIONS)}")
    return name


# An RPC of the service; the JSON schema lists them, so editors can complete them.
Operation = Annotated[
    str, AfterValidator(_known_operation), WithJsonSchema({"enum": list(OPERATIONS)})
]

# Sections of the design whose behaviour this version does not implement yet. A config
# that asks for metrics and silently gets none would be worse than a refusal.
NOT_YET_SUPPORTED: tuple[str, ...] = ()

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")


class ConfigError(Exception):
    """A config that cannot be used; `str()` is one line naming the key (the first problem),
    `problems` every problem found, each as (key path, message): what `check-config` prints."""

    def __init__(self, message: str, problems: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (("", message.removeprefix("config error: ")),)


class Strict(BaseModel):
    """Every section: unknown keys refused, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_listen(value: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 hosts in brackets), refusing anything else."""
    match = _HOST_PORT.match(value)
    if not match or not 0 <= int(match.group(2)) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return match.group(1), int(match.group(2))
