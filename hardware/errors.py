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


# Echoed values are cut so that one bad value (a 100,000-character name, a pasted file) cannot turn the
# one-line error into a wall of text: a run of text without spaces longer than MAX_VALUE_CHARS keeps its
# start and end around an ellipsis, and no part of the message grows past MAX_PART_CHARS. A word that is
# a path may be longer (MAX_PATH_WORD_CHARS, the longest file name most file systems allow): the file
# name is what the user needs to find the problem.
MAX_VALUE_CHARS = 80
MAX_PATH_WORD_CHARS = 255
MAX_PART_CHARS = 600
_ELLIPSIS = "\u2026"


def shorten(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` cut to about ``limit`` characters: its start and its end (where a path keeps its file
    name) around an ellipsis, with the full length said; unchanged when it is short enough."""
    if len(text) <= limit:
        return text
    head = max(limit * 2 // 3, 1)
    tail = max(limit - head - 1, 0)
    return f"{text[:head]}{_ELLIPSIS}{text[len(text) - tail:] if tail else ''} ({len(text):,} characters)"


def _cut_values(text: str) -> str:
    """Each long word of ``text`` shortened, then the whole part capped (see MAX_VALUE_CHARS)."""
    words = [shorten(word, MAX_PATH_WORD_CHARS if "/" in word or "\\" in word else MAX_VALUE_CHARS)
             for word in text.split()]
    return shorten(" ".join(words), MAX_PART_CHARS)


class InputError(ValueError):
    """A problem with something the user gave us, explained in one line.

    ``source`` is the file (or ``command line``), ``field`` the dotted field name inside it, ``problem``
    what is wrong and ``fix`` what to do about it. Every part is cut to a sane length (see
    :func:`shorten`), so an error never echoes a huge value whole.
    """

    def __init__(self, source: str | Path, field: str, problem: str, fix: str | None = None):
        self.source = str(source)
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [_cut_values(part) for part in (self.source, self.field, self.problem)]
        where = f"{parts[0]}: {parts[1]}" if parts[1] else parts[0]
        text = f"{where}: {parts[2]}"
        if self.fix:
            text += f"; {_cut_values(self.fix)}"
        return text


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    if len(name) > 4 * MAX_VALUE_CHARS:
        return ""  # nothing is close to a name that long, and difflib would take its time saying so
    close = difflib.get_close_matches(name.lower(), sorted(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file that must hold a mapping at the top level.

    Every input file goes through here: the checks on the path, the size, the nesting, the aliases
    and duplicate keys live in :mod:`hardware.yaml_input` (imported here, not at the top, because
    that module raises :class:`InputError`)."""
    from .yaml_input import read_mapping_file
    return read_mapping_file(path)
