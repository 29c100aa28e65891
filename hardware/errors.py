"""Input errors that reach the user as one line: the file, the field, what is wrong and the fix.

Every loader in plan-search (cluster files, model files, sweep files, command-line values) raises
:class:`InputError`; the command line prints ``str(error)`` and exits with status 2, never a traceback.
This module sits in ``hardware`` because it is the lowest layer: ``cost_model``, ``optimizer`` and
``scenarios`` all import from here, and nothing here imports from them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable

import yaml


class InputError(ValueError):
    """A problem with something the user gave us, explained in one line.

    ``source`` is the file (or ``command line``), ``field`` the dotted field name inside it, ``problem``
    what is wrong and ``fix`` what to do about it.
    """

    def __init__(self, source: str | Path, field: str, problem: str, fix: str | None = None):
        self.source = str(source)
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}: {self.field}" if self.field else self.source
        text = f"{where}: {self.problem}"
        if self.fix:
            text += f"; {self.fix}"
        return " ".join(text.split())  # one line, whatever the parts contained


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name.lower(), sorted(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file that must hold a mapping at the top level."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "", "file not found", "check the path")
    if path.is_dir():
        raise InputError(path, "", "is a directory, not a file", "pass the YAML file inside it")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, "", f"cannot be read ({exc.__class__.__name__})", "pass a UTF-8 text file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InputError(path, "", f"is not valid YAML{at}", "fix the syntax") from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise InputError(path, "", f"must be a mapping of fields, but it is {kind}",
                         "write 'field: value' lines at the top level")
    return data
