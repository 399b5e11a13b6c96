"""Number formatting shared by the widgets."""

from __future__ import annotations

from optwatch.protocol import finite
from optwatch.summary import duration_text, non_finite_text


def number(value: object, spec: str = ".4g") -> str:
    return format(value, spec) if finite(value) else non_finite_text(value, "–")


def nbytes(value: object) -> str:
    if not finite(value):
        return "–"
    size = float(value)  # type: ignore[arg-type]
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def seconds(value: object) -> str:
    """``0.412 ms``, ``113 ms``, ``1.35 s``: three digits, as the headless line says them (a 0.2 ms step read
    "0 ms")."""
    return duration_text(float(value)) if finite(value) else "–"  # type: ignore[arg-type]


def milliseconds(value: object) -> str:
    """Short durations to a few digits: ``0.21 ms``, ``1.8 ms``, ``42 ms``."""
    if not finite(value):
        return "–"
    ms = float(value) * 1000  # type: ignore[arg-type]
    return f"{ms:.2f} ms" if ms < 1 else f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"
