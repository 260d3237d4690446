"""How every command prints data on stdout: counted nouns, one JSON object, events (as text or
JSON Lines) and rows (an aligned table, CSV, a JSON array or JSON Lines). Blobs print as their
text, or the ``$base64`` form of hybridlog/output.py."""

from __future__ import annotations

import csv
import itertools
import json
import sys
import textwrap
from collections.abc import Iterable

import click

from hybridlog.output import json_value, text_value
from hybridlog.sql import QueryResult, SqlValue
from hybridlog.types import Record


def plural(count: int, noun: str) -> str:
    """``1 record``, ``2 records``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def print_json(value: object) -> None:
    """One JSON object (keys in the order the command builds them: ``stream_id`` first)."""
    click.echo(json.dumps(value, indent=2))


def print_payload(payload: bytes) -> None:
    """An event as one line of text: its UTF-8 text, or the ``$base64`` form (hybridlog/output.py)."""
    sys.stdout.write(text_value(payload) + "\n")


def record_json(record: Record, global_position: int | None = None) -> str:
    """One record as a line of JSON Lines (``read --json``, ``tail --json``, ``--records``), in the
    vocabulary every command's JSON uses; ``global_position`` where the command knows it (``tail``)."""
    fields: dict[str, object] = {"stream_id": record.stream_id, "offset": record.offset}
    if global_position is not None:
        fields["global_position"] = global_position
    fields |= {
        "kind": record.kind.name.lower(),
        "timestamp_ns": record.timestamp_ns,
        "prev_hash": record.prev_hash.hex(),
        "hash": record.hash.hex(),
        "payload": json_value(record.payload),
    }
    return json.dumps(fields)


OUTPUT_FORMATS = ("table", "csv", "json", "nl")
TABLE_WIDTH_ROWS = 1000  # a table's column widths come from its first rows; later wider values stick out


def render_rows(result: QueryResult, output: str) -> None:
    """Write a query result's rows to stdout in ``output`` format (table, csv, json or nl)."""
    write_rows(result.columns, result.rows, output)


def write_rows(columns: list[str], rows: Iterable[tuple[SqlValue, ...]], output: str) -> None:
    """Rows written as they come (one in memory at a time; a table keeps its first rows for the
    column widths), each flushed so that a slow query's rows show as soon as they are found.
    Objects keep the columns' order; blobs are text or ``$base64`` (hybridlog/output.py)."""
    out = sys.stdout

    def item(row: tuple[SqlValue, ...]) -> dict[str, object]:
        return {c: json_value(v) for c, v in zip(columns, row, strict=True)}

    if output == "json":  # the same text as one json.dumps(list, indent=2), written row by row
        separator = "[\n"
        for row in rows:
            out.write(separator + textwrap.indent(json.dumps(item(row), indent=2), "  "))
            out.flush()
            separator = ",\n"
        out.write("[]\n" if separator == "[\n" else "\n]\n")
    elif output == "nl":  # JSON Lines: one object per line
        for row in rows:
            out.write(json.dumps(item(row)) + "\n")
            out.flush()
    elif output == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([text_value(v) for v in row])
            out.flush()
    else:

        def text(row: tuple[SqlValue, ...]) -> list[str]:
            return [text_value(v, null="NULL") for v in row]

        rest = iter(rows)
        first = [text(row) for row in itertools.islice(rest, TABLE_WIDTH_ROWS)]
        widths = [max([len(c)] + [len(r[i]) for r in first]) for i, c in enumerate(columns)]

        def line(values: list[str]) -> None:
            out.write("  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip() + "\n")

        line(list(columns))
        line(["-" * w for w in widths])
        for values in first:
            line(values)
        out.flush()
        for row in rest:
            line(text(row))
            out.flush()
    out.flush()
