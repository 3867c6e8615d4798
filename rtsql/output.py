"""One output machinery for every command that prints rows: table, json, jsonl or csv."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import date, datetime
from typing import Any, Iterable, Sequence, TextIO


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, (list, tuple)):
        return "|".join(_cell(v) for v in value)
    return str(value)


def render(columns: Sequence[str], rows: Iterable[Sequence[Any]], fmt: str = "table",
           out: TextIO | None = None) -> str:
    """Write rows in ``fmt`` to ``out`` (or return them as a string when ``out`` is None)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}")
    buf = out if out is not None else io.StringIO()
    _WRITERS[fmt](columns, [tuple(r) for r in rows], buf)
    return "" if out is not None else buf.getvalue()


def _table(columns: Sequence[str], rows: list[tuple], buf: TextIO) -> None:
    """Aligned columns under a rule; numbers (columns of numbers and NULLs) to the right."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) and rows
               for i in range(len(columns))]

    def line(values):
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    buf.write(line(columns) + "\n")
    buf.write("  ".join("-" * w for w in widths) + "\n")
    for r in cells:
        buf.write(line(r) + "\n")


def _json(columns: Sequence[str], rows: list[tuple], buf: TextIO) -> None:
    objs = [dict(zip(columns, map(_jsonable, row))) for row in rows]
    buf.write(json.dumps(objs, indent=2, ensure_ascii=False) + "\n")


def _jsonl(columns: Sequence[str], rows: list[tuple], buf: TextIO) -> None:
    for row in rows:
        buf.write(json.dumps(dict(zip(columns, map(_jsonable, row))), ensure_ascii=False) + "\n")


def _csv(columns: Sequence[str], rows: list[tuple], buf: TextIO) -> None:
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else _jsonable(v) for v in row])


_WRITERS = {"table": _table, "json": _json, "jsonl": _jsonl, "csv": _csv}
FORMATS = tuple(_WRITERS)  # the commands' --format choices, "table" the default
