"""Whether what AWS holds after a write is what the write wrote: by meaning, not bytes.

AWS rewrites what it stores: a registry policy comes back reformatted, with bare account
ids turned into root ARNs (service/aws/memory.py plays that part) and possibly one-element
lists for strings; replication rules may come back in another order, with an absent filter
list as an empty one. Any of that reported as "overwritten" would tell a caller its
successful write failed, which is far worse than missing a real overwrite; so both checks
lean towards "holds":

- the read-back equal to what AWS answered the write call (its own form of what it took)
  holds, whatever the comparison with the request says;
- replication: rules compared by identity (filters and destinations, as
  service/registry/model/plan.py matches them), order-insensitive;
- policy: parsed JSON compared after normalizing what IAM policy grammar treats alike
  (a string and a one-element list, the order and repetition of list items, an account id
  and its root ARN, scalars and their string form, a Statement object and a list of one).
"""

from __future__ import annotations

import json
import re
from typing import Any

from service.gen.v1 import registry_pb2 as pb
from service.registry.model import plan

_ROOT_ARN = re.compile(r"^arn:aws[a-z-]*:iam::([0-9]{12}):root$")


def replication_holds(
    written: pb.ReplicationConfiguration,
    read_back: pb.ReplicationConfiguration,
    answered: pb.ReplicationConfiguration | None = None,
) -> bool:
    """Whether the configuration read back has the rules written (or AWS's answer's)."""
    if answered is not None and _same_rules(answered, read_back):
        return True
    return _same_rules(written, read_back)


def _same_rules(one: pb.ReplicationConfiguration, other: pb.ReplicationConfiguration) -> bool:
    # Only rules added or removed count: a reordering alone ("change") is the same rules.
    return not any(
        change.action in ("add", "remove") for change in plan.replication_changes(one, other)
    )


def policy_holds(written: str | None, read_back: str | None, answered: str | None = None) -> bool:
    """Whether the policy read back is the one written (None: no policy), or AWS's answer."""
    if written is None or read_back is None:
        return written is None and read_back is None
    if answered is not None and (answered == read_back or _same_policy(answered, read_back)):
        return True
    return written == read_back or _same_policy(written, read_back)


def _same_policy(one: str, other: str) -> bool:
    try:
        same: bool = _normal(json.loads(one), "") == _normal(json.loads(other), "")
    except (ValueError, RecursionError):
        return False  # not JSON (AWS would not have taken it): only equal bytes hold
    return same


def _normal(value: Any, key: str) -> Any:
    """A form in which policies IAM reads alike are equal."""
    if key == "Statement":
        statements = value if isinstance(value, list) else [value]
        return tuple(sorted(repr(_normal(item, "")) for item in statements))
    if isinstance(value, dict):
        return tuple(sorted((k, _normal(v, k)) for k, v in value.items()))
    items = value if isinstance(value, list) else [value]
    if any(isinstance(item, dict | list) for item in items):
        return tuple(sorted(repr(_normal(item, "")) for item in items))
    return tuple(sorted({_scalar(item) for item in items}))


def _scalar(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    match = _ROOT_ARN.match(text)
    return match.group(1) if match else text
