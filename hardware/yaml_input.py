"""The one reader of every input file: cluster, model, training, sweep, study and published-runs files.

Each file is checked before anything is built from it, and each problem is one
:class:`~hardware.errors.InputError` line:

* the path: empty, containing a NUL byte, or longer than the file system allows (``Path.is_file``
  raises ``OSError: File name too long`` past 255 bytes a name and ``ValueError`` on a NUL byte);
* the size: at most :data:`MAX_FILE_BYTES`, read without reading more;
* the structure, walked as a flat stream of parser events before anything is composed: nesting at
  most :data:`MAX_NESTING_DEPTH` deep (PyYAML's composer and constructor recurse once per level, so a
  20,000-deep file raised ``RecursionError``), at most :data:`MAX_ALIASES` aliases and at most
  :data:`MAX_EXPANDED_NODES` nodes once aliases are expanded (the "billion laughs" file: nine levels
  of ten aliases each are 10^9 nodes in a 1 KB file);
* duplicate keys in a mapping are refused (PyYAML keeps the last one silently).

YAML is read with libyaml's C parser (``yaml.CSafeLoader``, about 10x faster than the pure-Python
one) where PyYAML was built with it, else with ``yaml.SafeLoader``; the limits hold with either, because
they are checked on the event stream, which neither parser builds recursively. ``.json`` files are read
with :mod:`json` (a Hugging Face ``config.json`` is JSON: ``1e-05`` is a number there, a string to
YAML 1.1), with the same duplicate-key, size and depth checks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError

MAX_FILE_BYTES = 16 * 2**20
"""Largest input file read. The largest file the tool ships (cost_model/calibration/data/published_runs.yaml) is about
0.6 MB and a Hugging Face config.json a few KB; 16 MiB is far past any hand-written input and small
enough to parse in well under a second."""

MAX_NESTING_DEPTH = 64
"""Deepest nesting of mappings and lists. Real inputs nest 3-5 levels (topology.scaleup_efficiency.all_to_all);
64 leaves room for anything hand-written and keeps the recursive constructor far from Python's limit."""

MAX_ALIASES = 1_000
"""Most ``*alias`` references in one file. The shipped files use none; a sweep may share a section
or two by anchor."""

MAX_EXPANDED_NODES = 1_000_000
"""Most nodes once every alias is expanded: what the file means, not what it spells. About 20x the
published-runs dataset; the "billion laughs" file means 10^9."""

MAX_NAME_BYTES = 255
"""Longest name of one path component (NAME_MAX on Linux, macOS and Windows file systems)."""

MAX_PATH_BYTES = 4096
"""Longest whole path (PATH_MAX on Linux)."""

_YAML_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping; carries the position of the second one."""

    def __init__(self, key: Any, mark: Any):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.problem_mark = key, mark


def strict_loader(base: type) -> type:
    """``base`` (a safe loader, C or Python) refusing duplicate keys.

    Merge keys (``<<: *defaults``) still work: a key the mapping spells out overrides the merged one,
    as YAML intends; only a key spelled out twice in the same mapping is refused."""

    class StrictLoader(base):  # type: ignore[misc, valid-type]
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:
                    continue  # an unhashable key: the base constructor reports it
                if duplicate:
                    raise _DuplicateKey(key, key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


StrictLoader = strict_loader(_YAML_LOADER)


def checked_path(path: str | Path, what: str = "file") -> Path:
    """``path`` as a Path, refusing what no file system accepts, with the reason in one line."""
    text = str(path)
    if not text.strip():
        raise InputError(what, "", "the path is empty", "give the path of the file")
    if "\0" in text:
        raise InputError(text.replace("\0", "\\0"), "", "the path contains a NUL byte",
                         "check how the path was written (a NUL cannot be part of a file name)")
    encoded = os.fsencode(text)  # the limits are in bytes, as the file system counts them
    if len(encoded) > MAX_PATH_BYTES:
        raise InputError(text, "", f"the path is {len(encoded):,} bytes long, more than the {MAX_PATH_BYTES:,} "
                         "a path may have", "give a shorter path")
    longest = max(encoded.replace(b"\\", b"/").split(b"/"), key=len)  # either separator, as on Windows
    if len(longest) > MAX_NAME_BYTES:
        raise InputError(text, "", f"a name in the path is {len(longest):,} bytes long, more than the "
                         f"{MAX_NAME_BYTES} a file name may have", "give the right file name or preset name")
    return Path(path)


def names_existing_file(text: str | Path) -> bool:
    """Whether ``text`` is the path of an existing file; False (never an exception) for names no file
    system accepts, which are then taken as preset names and reported as unknown presets."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def read_mapping_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file that must hold a mapping at the top level (see the module docstring)."""
    path = checked_path(path)
    text = _read_text(path)
    data = load_json_text(text, path) if path.suffix.lower() == ".json" else load_yaml_text(text, path)
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise InputError(path, "", f"must be a mapping of fields, but it is {kind}",
                         "write 'field: value' lines at the top level")
    return data


def _read_text(path: Path) -> str:
    """The file's text, at most MAX_FILE_BYTES of it; OS errors become one line."""
    try:
        if not path.exists():
            raise InputError(path, "", "file not found", "check the path")
        if path.is_dir():
            raise InputError(path, "", "is a directory, not a file", "pass the YAML file inside it")
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise InputError(path, "", f"cannot be read ({reason})", "check the path and its permissions") from None
    if len(raw) > MAX_FILE_BYTES:
        raise InputError(path, "", f"is larger than {MAX_FILE_BYTES // 2**20} MiB, the most an input file may be",
                         "pass the cluster, model, sweep or study file itself, not a data file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, "", f"is not UTF-8 text (byte {exc.start:,})", "pass a UTF-8 text file") from None


def load_yaml_text(text: str, source: str | Path) -> Any:
    """Parse YAML ``text`` within the limits of the module docstring; ``source`` names it in errors."""
    try:
        _check_structure(text, source)
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a safe loader)
    except _DuplicateKey as exc:
        raise InputError(source, _key_text(exc.key), f"is given twice{_at(exc.problem_mark)}; YAML would keep only "
                         "the last one", "delete one of them") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if "maximum nesting depth" in str(getattr(exc, "problem", "")):  # libyaml's own limit, met first
            raise InputError(source, "", f"nests more than {MAX_NESTING_DEPTH} levels deep{_at(mark)}",
                             "flatten the file (real inputs nest a few levels)") from None
        raise InputError(source, "", f"is not valid YAML{_at(mark)}{_reason(exc)}", "fix the syntax") from None
    except RecursionError:  # the structure check makes this unreachable; kept so it can never escape
        raise InputError(source, "", f"nests more than {MAX_NESTING_DEPTH} levels deep",
                         "flatten the file (real inputs nest a few levels)") from None


def load_json_text(text: str, source: str | Path) -> Any:
    """Parse JSON ``text``, refusing duplicate keys and deep nesting like :func:`load_yaml_text`."""
    def refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        mapping: dict[str, Any] = {}
        for key, value in pairs:
            if key in mapping:
                raise InputError(source, key, "is given twice in one object; JSON readers keep only the last one",
                                 "delete one of them")
            mapping[key] = value
        return mapping
    try:
        data = json.loads(text, object_pairs_hook=refuse_duplicates)
    except json.JSONDecodeError as exc:
        raise InputError(source, "", f"is not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})",
                         "fix the syntax") from None
    except RecursionError:
        raise InputError(source, "", f"nests more than {MAX_NESTING_DEPTH} levels deep",
                         "flatten the file (real inputs nest a few levels)") from None
    if _depth(data) > MAX_NESTING_DEPTH:
        raise InputError(source, "", f"nests more than {MAX_NESTING_DEPTH} levels deep",
                         "flatten the file (real inputs nest a few levels)")
    return data


def _check_structure(text: str, source: str | Path) -> None:
    """Walk the parser's event stream once: nesting depth, alias count and expanded size.

    Each finished node adds its expanded size to its parent; an anchor remembers the size of the node
    it names, so an alias costs what it stands for without being expanded.
    """
    stack: list[list[Any]] = []      # [expanded size so far, anchor] of each open mapping or list
    anchored: dict[str, int] = {}
    aliases = expanded = 0
    for event in yaml.parse(text, Loader=_YAML_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append([1, event.anchor])
            expanded += 1
            if len(stack) > MAX_NESTING_DEPTH:
                raise InputError(source, "", f"nests more than {MAX_NESTING_DEPTH} levels deep{_at(event.start_mark)}",
                                 "flatten the file (real inputs nest a few levels)")
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            size, anchor = stack.pop()
        elif isinstance(event, yaml.ScalarEvent):
            size, anchor = 1, event.anchor
            expanded += 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise InputError(source, "", f"uses more than {MAX_ALIASES:,} aliases{_at(event.start_mark)}",
                                 "write the repeated sections out, or use fewer anchors")
            size, anchor = anchored.get(event.anchor, 1), None
            expanded += size
        else:
            continue
        if expanded > MAX_EXPANDED_NODES:
            raise InputError(source, "", f"expands to more than {MAX_EXPANDED_NODES:,} values once its aliases are "
                             f"resolved{_at(event.start_mark)}", "use fewer nested aliases")
        if anchor is not None:
            anchored[anchor] = size
        if stack:
            stack[-1][0] += size


def _depth(data: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (counted no further than MAX_NESTING_DEPTH + 1)."""
    deepest, pending = 0, [(data, 0)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, (dict, list)):
            depth += 1
            deepest = max(deepest, depth)
            if depth <= MAX_NESTING_DEPTH:
                pending.extend((child, depth) for child in (value.values() if isinstance(value, dict) else value))
    return deepest


def _at(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _reason(exc: yaml.YAMLError) -> str:
    """The parser's own short reason ('found character that cannot start any token'), when it gave one."""
    problem = getattr(exc, "problem", None)
    return f" ({problem})" if problem else ""


def _key_text(key: Any) -> str:
    return key if isinstance(key, str) else repr(key)
