"""Stable identities: the tool version and short content hashes of canonical inputs.

A scenario has two identities (both hex strings of 16 characters, 64 bits of SHA-256):

* ``scenario_id`` hashes what the sweep file *says* (the model and cluster as written, the override
  values, the training settings, the objective). It is the same from one night to the next, so the
  nightly comparison joins on it.
* ``inputs_hash`` hashes what the search *receives* (every field of the resolved model, cluster,
  training and search options) plus the tool version. A part file is reused on resume only when this
  matches, so an edited model file, a changed preset or a new release recomputes the scenario.

The tool version carries a fingerprint of the code and data that compute a result
(``0.1.0+code.<12 hex>``, :func:`code_fingerprint`): an editable install keeps its release number across
commits, and a nightly sweep must not reuse a part priced by yesterday's cost model, nor call a plan
that moved because the cost model changed an unexplained change (``compare`` lists ``tool_version``
among the inputs that differ).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from functools import lru_cache
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

HASH_HEX_CHARS = 16


FINGERPRINTED_PACKAGES = ("cost_model", "hardware", "optimizer", "scenarios")
"""The packages whose code and bundled data (presets, calibration tables, fitted parameters) decide a
plan's numbers."""
FINGERPRINTED_SUFFIXES = (".py", ".yaml", ".yml", ".csv", ".json")
"""Source and data files; prose (``.md``) and bytecode caches do not change a result."""
FINGERPRINT_HEX_CHARS = 12
CODE_LABEL = "+code."
"""What separates the release from the fingerprint in :func:`tool_version`."""


def code_fingerprint() -> str:
    """SHA-256 prefix over the path and bytes of every source and data file of the packages that
    price a plan, in path order: the same checkout always gives the same fingerprint, and any edit
    to the cost model, a preset or a fitted parameter gives another."""
    digest = hashlib.sha256()
    for package in FINGERPRINTED_PACKAGES:
        root = Path(import_module(package).__file__).parent
        files = sorted(p for p in root.rglob("*")
                       if p.suffix in FINGERPRINTED_SUFFIXES and p.is_file() and "__pycache__" not in p.parts)
        for path in files:
            digest.update(f"{package}/{path.relative_to(root).as_posix()}".encode("utf-8") + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:FINGERPRINT_HEX_CHARS]


@lru_cache(maxsize=1)
def tool_version() -> str:
    """The installed plan-search release ('unknown' when run from a checkout that is not installed)
    with the code fingerprint as a PEP 440 local label, e.g. ``0.1.0+code.3f9a0c1d2e4b``."""
    try:
        release = metadata.version("plan-search")
    except metadata.PackageNotFoundError:
        release = "unknown"
    return f"{release}{CODE_LABEL}{code_fingerprint()}"


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
