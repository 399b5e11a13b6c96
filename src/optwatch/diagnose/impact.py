"""Before and after a control took effect: did AMP or cudnn.benchmark help on this run?"""

from __future__ import annotations

from typing import Any

from optwatch.summary import Window, window

WINDOW = 50


def compare(steps: list[dict[str, Any]], effective_step: int, span: int = WINDOW) -> tuple[Window, Window]:
    """The ``span`` steps before ``effective_step`` against the ones from it on (as many as there are)."""
    before = [s for s in steps if effective_step - span <= s["step"] < effective_step]
    after = [s for s in steps if effective_step <= s["step"] < effective_step + span]
    return window(before), window(after)


def change(before: float | None, after: float | None) -> str:
    if before is None or after is None or before == 0:
        return ""
    return f"{100 * (after - before) / abs(before):+.0f}%"
