"""The output formats every command offers (``--format``)."""

from enum import Enum


class OutputFormat(str, Enum):
    """``table`` for people, ``json`` and ``csv`` for programs (units in the field names)."""

    table = "table"
    json = "json"
    csv = "csv"
