"""What one framework needs to run one priced plan (the value every emitter returns)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Emission:
    """What one framework needs to run one priced plan."""

    framework: str
    """One of :data:`FRAMEWORKS`."""
    tested_version: str
    """The framework release the output was checked against (printed with it)."""
    argv: tuple[str, ...]
    """The command as an argument list (what JSON output carries)."""
    env: tuple[tuple[str, str], ...] = ()
    """Environment variables the launch needs, in order."""
    differences: tuple[str, ...] = field(default=())
    """What the framework runs differently from the priced plan (empty: exactly the priced plan)."""
    text: str = ""
    """What a user pastes: the shell command (or config) with the environment."""

    def __contains__(self, fragment: str) -> bool:
        return fragment in self.text
