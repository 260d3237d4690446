"""Plain-text formatting shared by the report tables and the TARGETS section."""

from __future__ import annotations

from collections.abc import Sequence

from benchlib.measure import JSONValue


def grid(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, *, note: bool = False) -> list[str]:
    """A fixed-width table: the first ``left`` columns left-aligned, the rest right-aligned but for
    the last one when ``note`` (free text, left-aligned)."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    last = len(headers) - 1

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left or (note and i == last) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths), *(line(row) for row in rows)]


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def times(value: float | None) -> str:
    """A ratio: two decimals, or three significant digits below 0.1 (so 0.0009x does not show as 0.00x)."""
    if value is None:
        return "-"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.3g}x"


def fixed(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def micro(seconds: float | None) -> str:
    """Seconds shown in microseconds."""
    return "-" if seconds is None else f"{seconds * 1e6:,.1f} us"


def onoff(fsync: JSONValue) -> str:
    return "on" if fsync else "off"
