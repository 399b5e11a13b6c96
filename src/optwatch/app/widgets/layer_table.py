"""One row per module: gradient norm, weight norm, update ratio (each with a sparkline), zero gradients.

Sorted by model order until ``t`` (or a click on a column header) picks another column; layers in an
ongoing alert episode are red and marked ``!``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from optwatch.app.layer_history import LayerHistory
from optwatch.app.sparkline import sparkline

NAME_WIDTH = 16
# '#' 3 + name + three "1.23e-04 " cells 9 + zero 4, plus 1 padding on each side of 6 columns, scrollbar 2.
FIXED_WIDTH = 3 + NAME_WIDTH + 3 * 9 + 4 + 12 + 2
# (label, metric or None for model order); numbers sort largest first.
SORTS = (
    ("model order", None),
    ("grad norm", "grad_norm"),
    ("weight norm", "weight_norm"),
    ("update ratio", "update_ratio"),
    ("zero grads", "zero_frac"),
)
COLUMN_SORT = {"grad": "grad_norm", "weight": "weight_norm", "update": "update_ratio", "zero": "zero_frac"}


def log_sparkline(values: Sequence[float | None], width: int) -> str:
    """The last ``width`` values on a log scale (gradients span orders of magnitude), right-aligned;
    zero, NaN/Inf and missing values are blanks (the number beside it says which)."""
    logs = [math.log10(v) if v is not None and math.isfinite(v) and v > 0 else None for v in values]
    return sparkline(logs, width, low=None).rjust(width)


def _number(value: float | None, underflow: bool = False) -> str:
    """Seven characters at most. ``underflow``: a zero norm of entries that are not all zero (the float32
    sum of squares underflows for entries below about 1e-22)."""
    if value is None:
        return "–"
    if not math.isfinite(value):
        return "NaN/Inf"
    if value == 0:
        return "~0" if underflow else "0"
    return f"{value:.2e}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"[:7]


class LayerTable(DataTable):
    BINDINGS = [Binding("t", "next_sort", "Sort layers")]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.sort_index = 0
        self.history: LayerHistory | None = None
        self.rows_shown: list[tuple[str, ...]] = []
        """The plain text of each row on screen, in order, for tests."""

    def on_mount(self) -> None:
        self.add_column("#", key="index")
        self.add_column("layer", key="layer")
        self.add_column("grad norm", key="grad")
        self.add_column("weight norm", key="weight")
        self.add_column("update ratio", key="update")
        self.add_column("zero", key="zero")
        self._title()

    def _title(self) -> None:
        self.border_title = f"layers · sorted by {SORTS[self.sort_index][0]} (t)"

    def action_next_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(SORTS)
        self._title()
        self.redraw()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        metric = COLUMN_SORT.get(str(event.column_key.value))
        self.sort_index = next((i for i, (_, m) in enumerate(SORTS) if m == metric), 0)
        self._title()
        self.redraw()

    def on_resize(self) -> None:
        self.redraw()

    def show(self, history: LayerHistory) -> None:
        self.history = history
        self.redraw()

    def _order(self, history: LayerHistory) -> list[str]:
        metric = SORTS[self.sort_index][1]
        names = list(history.modules)
        if metric is None:
            return names

        def key(name: str) -> float:
            module = history.latest.get(name)
            value = getattr(module, metric) if module is not None else None
            if value is None:
                return math.inf  # unmeasured last
            return -math.inf if math.isnan(value) else -value  # NaN first: it is what needs looking at

        return sorted(names, key=key)

    def redraw(self) -> None:
        history = self.history
        if history is None or not self.columns:
            return
        # Sparklines take what the fixed columns leave, split three ways.
        spark = max(3, min(24, (self.size.width - FIXED_WIDTH) // 3))
        selected = self.cursor_row
        position = {name: i for i, name in enumerate(history.modules)}
        self.clear()
        shown = []
        for name in self._order(history):
            module = history.latest.get(name)
            flagged = name in history.alerting
            style = "bold red" if flagged else ("dim" if module is None else "")
            cells = [
                f"{position[name]}{'!' if flagged else ''}",
                name if len(name) <= NAME_WIDTH else "…" + name[-NAME_WIDTH + 1 :],
            ]
            for metric in ("grad_norm", "weight_norm", "update_ratio"):
                value = getattr(module, metric) if module is not None else None
                underflow = module is not None and (metric != "grad_norm" or module.zero_frac < 1)
                cells.append(f"{_number(value, underflow):>8} {log_sparkline(history.column(name, metric), spark)}")
            cells.append(f"{100 * module.zero_frac:3.0f}%" if module is not None else "–")
            self.add_row(*(Text(cell, style=style) for cell in cells), key=name)
            shown.append(tuple(cells))
        self.rows_shown = shown
        if shown:
            self.move_cursor(row=min(selected, len(shown) - 1), animate=False)
