"""Runs side by side (`optwatch compare`): each run's curves aligned by step or by wall time, and a table of the
figures that matter with the settings that differ marked. The one place these figures are made; no torch, no
textual (the dashboard draws them, `--headless` prints them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optwatch.protocol import finite, first_step
from optwatch.store import EMA_ALPHA, Store
from optwatch.summary import median, window

COLOURS = ("cyan", "orange", "magenta", "green", "yellow", "blue")


@dataclass(frozen=True)
class Row:
    label: str
    values: list[str]
    setting: bool = False
    """A setting (lr, AMP, world size...) rather than an outcome: marked when the runs differ in it."""

    @property
    def differs(self) -> bool:
        return self.setting and len(set(self.values)) > 1


@dataclass
class RunCurves:
    name: str
    steps: list[int]
    minutes: list[float | None]
    """Each point's wall-clock time, in minutes from the run's first step."""
    loss: list[float | None]
    colour: str


@dataclass
class Comparison:
    names: list[str]
    rows: list[Row]
    curves: list[RunCurves] = field(default_factory=list)

    def table_text(self) -> str:
        width = max(len(row.label) for row in self.rows) + 4  # the "≠ " mark and a gap
        columns = [max(len(name), *(len(row.values[i]) for row in self.rows)) for i, name in enumerate(self.names)]
        lines = [" " * width + "  ".join(name.ljust(c) for name, c in zip(self.names, columns))]
        for row in self.rows:
            label = ("≠ " if row.differs else "  ") + row.label
            lines.append(label.ljust(width) + "  ".join(v.ljust(c) for v, c in zip(row.values, columns)))
        return "\n".join(line.rstrip() for line in lines)


def compare_runs(runs: list[tuple[str, Store]]) -> Comparison:
    names = [name for name, _ in runs]
    figures = [_figures(store) for _, store in runs]
    labels = list(figures[0]) if figures else []
    rows = [Row(label, [f[label][0] for f in figures], figures[0][label][1]) for label in labels]
    curves = [_curves(name, store, COLOURS[i % len(COLOURS)]) for i, (name, store) in enumerate(runs)]
    return Comparison(names, rows, curves)


def _curves(name: str, store: Store, colour: str) -> RunCurves:
    state = store.primary
    if state is None or "loss" not in state.whole.series:
        return RunCurves(name, [], [], [], colour)
    steps, loss, _, _ = state.whole.series["loss"].points()
    minutes: list[float | None] = [None] * len(steps)
    times = state.whole.series.get("time")
    if times is not None and times.width == state.whole.series["loss"].width:
        by_step = dict(zip(*times.points()[:2]))
        first = next((t for t in by_step.values() if t is not None), None)
        if first is not None:
            minutes = [(by_step[s] - first) / 60 if by_step.get(s) is not None else None for s in steps]
    return RunCurves(name, steps, minutes, loss, colour)


def _figures(store: Store) -> dict[str, tuple[str, bool]]:
    """Label -> (text, is a setting), in the order the table shows them."""
    with store.lock:
        state = store.primary
        hello = state.hello if state else {}
        steps = list(state.steps) if state else []
        smoothed = [value for value in (state.loss_ema if state else ()) if value is not None]
        whole = state.whole.series if state else {}
        alerts = len(store.rare.get("alert", ()))
    losses = [s["loss"] for s in steps if finite(s.get("loss"))]
    best_smoothed = _number(min(smoothed)) if smoothed else "-"
    if steps and steps[0]["step"] > first_step(hello):  # a long run: the store holds its latest steps only
        best_smoothed += f" (last {len(steps)} steps)"
    loss_series = whole.get("loss")
    lows = [v for v in (loss_series.points()[2] if loss_series else []) if v is not None]
    typical = window(steps)  # the step time and throughput every view shows, over the steps held
    lr_means = whole["lr"].points()[1] if "lr" in whole else []
    lr_start = lr_means[0] if lr_means else None
    first, last = (steps[0], steps[-1]) if steps else ({}, {})
    argv = hello.get("argv")
    summary = store.summary()
    whole_rate = summary.run_samples_per_s if summary is not None else None
    return {
        "steps": (str(last["step"] - first_step(hello) + 1) if last else "-", False),
        "final loss": (_number(losses[-1]) if losses else "-", False),
        # A single batch's loss is noise on a small batch: the best is the smoothed loss the dashboard shows.
        f"best loss (ema {EMA_ALPHA})": (best_smoothed, False),
        "lowest batch loss": (_number(min(lows)) if lows else "-", False),
        "step time p50": (f"{typical.step_time_s * 1000:.1f} ms" if typical.step_time_s is not None else "-", False),
        # The median step's rate, beside its time (the window's samples over its time read the whole run's
        # 413 beside a 103 ms median step of 128 samples, on a busy machine whose slow steps weigh in it).
        "samples/s p50": (_median_rate(steps, typical.step_time_s), False),
        # Evaluations, checkpoints and waits between steps included: the median step leaves them out.
        "samples/s whole run": (f"{whole_rate:.0f}" if whole_rate is not None else "-", False),
        "alerts": (str(alerts), False),
        "lr (start)": (_number(lr_start) if lr_start is not None else "-", True),
        "lr (end)": (_number(last.get("lr")) if finite(last.get("lr")) else "-", True),
        "precision": (_setting(_first_with(steps, "precision"), last.get("precision")), True),
        "AMP (control)": (_flag(first.get("amp"), last.get("amp")), True),
        "cudnn.benchmark": (_flag(first.get("cudnn_benchmark"), last.get("cudnn_benchmark")), True),
        "world size": (str(hello.get("world_size", "-")), True),
        "script": (str(hello.get("script") or "-"), True),
        "arguments": (" ".join(str(a) for a in argv) if isinstance(argv, list) else "-", True),
    }


def _median_rate(steps: list[dict[str, Any]], step_time_s: float | None) -> str:
    """The median step's samples over the median step time, as text."""
    samples = median(s.get("samples") for s in steps)
    return f"{samples / step_time_s:.0f}" if samples is not None and step_time_s else "-"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


def _first_with(steps: list[dict[str, Any]], key: str) -> Any:
    return next((s[key] for s in steps if s.get(key) is not None), None)


def _setting(first: Any, last: Any) -> str:
    first, last = first or "-", last or "-"
    return str(first) if first == last else f"{first} → {last}"


def _flag(first: Any, last: Any) -> str:
    def word(value: Any) -> str:
        return "on" if value is True else "off" if value is False else "-"

    return word(first) if word(first) == word(last) else f"{word(first)} → {word(last)}"
