"""`optwatch compare`: runs side by side, their loss curves overlaid and the figures that matter in a table."""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Static

from optwatch.app.widgets.series_chart import SeriesChart
from optwatch.comparison import Comparison


class CompareApp(App[None]):
    CSS_PATH = "compare.tcss"
    TITLE = "optwatch compare"
    BINDINGS = [Binding("q", "quit", "Quit"), Binding("w", "toggle_axis", "Step / wall time")]

    def __init__(self, comparison: Comparison):
        super().__init__()
        self.comparison = comparison
        self.by_time = False

    def compose(self) -> ComposeResult:
        yield Static(id="compare-header")
        yield SeriesChart("Loss by step", id="compare-chart")
        yield DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("", key="label")
        for index, name in enumerate(self.comparison.names):
            table.add_column(Text(name, style=self.comparison.curves[index].colour), key=f"run{index}")
        for row in self.comparison.rows:
            label = Text(("≠ " if row.differs else "  ") + row.label, style="bold yellow" if row.differs else "")
            table.add_row(label, *(Text(v, style="bold" if row.differs else "") for v in row.values))
        self.draw()

    def draw(self) -> None:
        chart = self.query_one(SeriesChart)
        series = []
        for curves in self.comparison.curves:
            xs = curves.minutes if self.by_time else curves.steps
            points = [(x, y) for x, y in zip(xs, curves.loss) if x is not None]
            series.append((curves.name, [p[0] for p in points], [p[1] for p in points], curves.colour))
        chart.title = "Loss by wall time (minutes from the first step)" if self.by_time else "Loss by step"
        chart.integer_steps = not self.by_time
        chart.set_series(series)
        names = "  ".join(self.comparison.names)
        axis = "wall time" if self.by_time else "step"
        header = f"comparing {len(self.comparison.names)} runs by {axis}: {names}"
        self.query_one("#compare-header", Static).update(header)

    def action_toggle_axis(self) -> None:
        self.by_time = not self.by_time
        self.draw()
