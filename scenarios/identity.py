"""Stable identities: the tool version and short content hashes of canonical inputs.

A scenario has two identities (both hex strings of 16 characters, 64 bits of SHA-256):

* ``scenario_id`` hashes what the sweep file *says* (the model and cluster as written, the override
  values, the training settings, the objective). It is the same from one night to the next, so the
  nightly comparison joins on it.
* ``inputs_hash`` hashes what the search *receives* (every field of the resolved model, cluster,
  training and search options) plus the tool version. A part file is reused on resume only when this
  matches, so an edited model file, a changed preset or a new release recomputes the scenario.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from functools import lru_cache
from importlib import metadata
from typing import Any

HASH_HEX_CHARS = 16


@lru_cache(maxsize=1)
def tool_version() -> str:
    """The installed plan-search version ('unknown' when run from a checkout that is not installed)."""
    try:
        return metadata.version("plan-search")
    except metadata.PackageNotFoundError:
        return "unknown"


def canonical(value: Any, memo: dict[int, tuple[Any, Any]] | None = None) -> Any:
    """A JSON-ready copy: dataclasses and pydantic models as sorted mappings, tuples as lists.

    ``memo`` (id -> (object, copy)) reuses the copy of a dataclass or model seen before: a sweep's
    scenarios share their model, cluster and option objects, and converting them once instead of once
    per scenario makes expansion several times faster. The memo holds the object itself, so its id
    cannot be reused while the memo lives; use one only while the objects do not change."""
    if memo is not None and (dataclasses.is_dataclass(value) or hasattr(value, "model_dump")):
        hit = memo.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        result = _canonical(value, memo)
        memo[id(value)] = (value, result)
        return result
    return _canonical(value, memo)


def _canonical(value: Any, memo: dict[int, tuple[Any, Any]] | None) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: canonical(getattr(value, f.name), memo) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):
        return canonical(value.model_dump(), memo)
    if isinstance(value, dict):
        return {str(k): canonical(v, memo) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v, memo) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # 4096 and 4096.0 are the same input
    return value


def stable_hash(value: Any, memo: dict[int, tuple[Any, Any]] | None = None) -> str:
    """Hex SHA-256 prefix of the canonical JSON of ``value`` (key order and int/float spelling do not matter);
    ``memo`` as in :func:`canonical`."""
    text = json.dumps(canonical(value, memo), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_HEX_CHARS]
