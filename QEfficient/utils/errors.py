"""Short error descriptions for tables and reports."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 240) -> str:
    """`Type: first non-empty line of the message`, cut to `limit` characters (one table cell)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0].strip() if lines else ''}"[:limit]
