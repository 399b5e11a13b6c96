"""The Hot spots tab: what the last profiler window found, and what the profiler is doing now."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from optwatch.options import DEFAULT_PROFILE_STEPS
from optwatch.protocol import finite
from optwatch.store import Store

# Sort keys, in the order `t` cycles through them; the record's own `sort_by` comes first.
SORT_LABELS = {"self_cpu_s": "self CPU time", "self_device_s": "self GPU time", "calls": "calls"}
COLUMNS = [
    ("op", "Op"),
    ("self_cpu_s", "Self CPU"),
    ("self_device_s", "Self GPU"),
    ("pct", "%"),
    ("flags", "Flags"),
    ("module", "Module"),
    ("calls", "Calls"),
    ("shapes", "Input shapes"),
]
OP_WIDTH = 34
MODULE_WIDTH = 24
SHAPES_WIDTH = 48


def duration(seconds: Any) -> str:
    if not finite(seconds):
        return "–"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def clip(text: str | None, width: int, keep_end: bool = False) -> str:
    if not text:
        return "–"
    if len(text) <= width:
        return text
    return "…" + text[-(width - 1) :] if keep_end else text[: width - 1] + "…"


def module_text(op: dict[str, Any]) -> str:
    """Where most of an op's time went, and how many other modules ran it too: ``layer1.conv1 +8``."""
    more = op.get("modules_more") or 0
    suffix = f" +{more}" if isinstance(more, int) and more > 0 else ""
    return clip(op.get("module"), MODULE_WIDTH - len(suffix), keep_end=True) + (suffix if op.get("module") else "")


def modules_text(modules: list[dict[str, Any]]) -> str:
    """The ops' time by where it ran, as shares of the table's total: ``by module: heavy 69% · fc3 12%``
    (those that read 0% left out: the line stays short enough to leave the table its rows)."""
    shown = [f"{m.get('name')} {m['pct']:.0f}%" for m in modules if finite(m.get("pct")) and m["pct"] >= 0.5]
    return "by module: " + " · ".join(shown) if shown else ""


def shapes_text(shapes: list[Any]) -> str:
    """The heaviest input shapes of an op, e.g. ``[128,3,32,32] [32,3,3,3]`` (non-tensor inputs left out)."""
    if not shapes:
        return ""
    tensors = [dims for dims in shapes[0] if dims]
    text = " ".join("[" + ",".join(str(d) for d in dims) + "]" for dims in tensors)
    return clip(text, SHAPES_WIDTH) if text else ""


def steps_text(record: dict[str, Any]) -> str:
    steps = record.get("steps") or []
    return f"steps {steps[0]}-{steps[1]}" if len(steps) == 2 else "a window"


class HotspotsView(Vertical):
    """State line, digest, culprits, modules, the ops table (sortable) and the trace path."""

    BINDINGS = [Binding("t", "cycle_sort", "Sort")]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.state_text = ""
        """The plain text on screen, for tests: state line, digest line, culprits, modules, trace line."""
        self.digest_text = ""
        self.culprits_text = ""
        self.modules_text = ""
        self.trace_text = ""
        self.rows: list[list[str]] = []
        """The table's cells as shown, top row first."""
        self.sort_key: str | None = None
        """None: the record's own ``sort_by``."""
        self.can_profile = True
        """False in a replay and once the run has ended: ``p`` is then not offered here."""
        self._note: str | None = None
        self._note_after_seq: int | None = None
        self._note_after_events: int | None = None
        self._shown: tuple[Any, ...] | None = None
        self._record: dict[str, Any] | None = None
        self._store: Store | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="hotspots-state")
        yield Static(id="hotspots-digest")
        yield Static(id="hotspots-culprits")
        yield Static(id="hotspots-modules")
        yield DataTable(id="hotspots-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="hotspots-trace")

    def on_show(self) -> None:
        # The tab's keys (t sorts) work at once, without tabbing into the table first.
        self.query_one("#hotspots-table", DataTable).focus()

    # --- what the app tells it --------------------------------------------------------------------------
    def note(self, text: str | None, store: Store | None = None) -> None:
        """A line about a request in flight; it gives way to the next hotspots record the run sends."""
        self._note = text
        self._note_after_seq = None
        if store is not None:
            with store.lock:
                latest = self._latest(store)
                self._note_after_seq = latest.get("seq", -1) if latest else -1
                self._note_after_events = len(_profile_events(store))
            self.show(store)

    def _latest(self, store: Store) -> dict[str, Any] | None:
        state = store.primary
        return state.latest.get("hotspots") if state is not None else store.latest.get("hotspots")

    # --- rendering --------------------------------------------------------------------------------------
    def show(self, store: Store) -> None:
        self._store = store
        with store.lock:
            latest = self._latest(store)
            rank = latest.get("rank") if latest else None
            done = next(
                (
                    r
                    for r in reversed(store.rare.get("hotspots", ()))
                    if r.get("status") == "done" and (rank is None or r.get("rank") == rank)
                ),
                None,
            )
            state = store.primary
            last = state.last_step if state is not None else None
            current_step = last.get("step") if last else None
            answers = _profile_events(store)
        if self._note_after_events is not None and len(answers) > self._note_after_events:
            answer = answers[-1]  # the run took the profile command, or said why not
            self._note_after_events = None
            if answer.get("status") == "accepted":
                self._note = f"{answer.get('reason') or 'profiling soon'}…"
            else:
                self._note = f"not profiling: {answer.get('reason')}"
        if latest is not None and self._note_after_seq is not None and latest.get("seq", -1) > self._note_after_seq:
            self._note = None  # the run has answered with a record
        self._show_state(latest, done, current_step)
        if self._shown != self._table_key(done):
            self._show_record(done)

    def _show_state(self, latest: dict[str, Any] | None, done: dict[str, Any] | None, step: int | None) -> None:
        style = "bold"
        if latest is not None and latest.get("status") == "profiling":
            steps = latest.get("steps") or [0, 0]
            if step is not None and step > steps[1]:
                text = f"summarising {steps_text(latest)}…"
            else:
                text = f"profiling {steps_text(latest)}…" + (f" (now at step {step})" if step is not None else "")
            style = "bold yellow"
        elif self._note:
            text, style = self._note, "yellow"
        elif latest is not None and latest.get("status") == "failed":
            text, style = f"profiling {steps_text(latest)} failed: {latest.get('error', '?')}", "bold red"
        elif done is not None:
            sort_by = self._sort_key(done)
            count = done["steps"][1] - done["steps"][0] + 1 if len(done.get("steps") or []) == 2 else None
            parts = [steps_text(done)]
            if count and finite(done.get("wall_s")):
                parts.append(f"{duration(done['wall_s'] / count)}/step")
            if done.get("partial"):
                parts.append("cut short by the end of the run")
            parts.append(f"sorted by {SORT_LABELS.get(sort_by, sort_by)} (t)")
            text = " · ".join(parts + (["p profiles again"] if self.can_profile else []))
        elif self.can_profile:
            text, style = f"no profile yet: p profiles the next {DEFAULT_PROFILE_STEPS} steps", "dim"
        else:
            text, style = "no profile in this run", "dim"
        self.state_text = text
        self.query_one("#hotspots-state", Static).update(Text(text, style=style))

    def _sort_key(self, record: dict[str, Any]) -> str:
        return self.sort_key or record.get("sort_by") or "self_cpu_s"

    def _table_key(self, record: dict[str, Any] | None) -> tuple[Any, ...]:
        if record is None:
            return (None,)
        return (record.get("seq"), record.get("rank"), self._sort_key(record))

    def _show_record(self, record: dict[str, Any] | None) -> None:
        self._shown = self._table_key(record)
        self._record = record
        table = self.query_one("#hotspots-table", DataTable)
        table.clear(columns=True)
        self.rows = []
        if record is None:
            self.digest_text = self.culprits_text = self.modules_text = self.trace_text = ""
            for widget_id in ("#hotspots-digest", "#hotspots-culprits", "#hotspots-modules", "#hotspots-trace"):
                self.query_one(widget_id, Static).update("")
            return
        self.digest_text = record.get("digest", "")
        self.query_one("#hotspots-digest", Static).update(Text(self.digest_text, style="bold"))
        culprits = []
        for culprit in record.get("culprits") or []:
            share = culprit.get("pct_of_wall")
            amount = f"{share:.0f}% of the step" if finite(share) else duration(culprit.get("s"))
            culprits.append(f"{culprit.get('flag')} {amount} ({culprit.get('calls', 0)} calls)")
        self.culprits_text = " · ".join(culprits)
        self.query_one("#hotspots-culprits", Static).update(Text(self.culprits_text, style="dim"))
        self.modules_text = modules_text(record.get("modules") or [])
        self.query_one("#hotspots-modules", Static).update(Text(self.modules_text))
        trace = record.get("trace")
        self.trace_text = f"trace: {trace}" if trace else f"trace not written: {record.get('trace_error', '?')}"
        self.query_one("#hotspots-trace", Static).update(Text(self.trace_text, style="cyan" if trace else "red"))

        has_device = record.get("device_total_s") is not None
        columns = [(key, label) for key, label in COLUMNS if key != "self_device_s" or has_device]
        for key, label in columns:
            table.add_column(label, key=key)
        sort_by = self._sort_key(record)
        ops = sorted(record.get("ops") or [], key=lambda op: -(op.get(sort_by) or 0))
        for op in ops:
            cells = {
                "op": clip(op.get("name"), OP_WIDTH),
                "self_cpu_s": duration(op.get("self_cpu_s")),
                "self_device_s": duration(op.get("self_device_s")),
                "pct": f"{op.get('pct', 0):.1f}",
                "module": module_text(op),
                "flags": ",".join(op.get("flags") or []),
                "calls": str(op.get("calls", "")),
                "shapes": shapes_text(op.get("shapes") or []),
            }
            row = [cells[key] for key, _ in columns]
            self.rows.append(row)
            # Text, not markup: op and module names come from the run ("[/...]" is a name like any other).
            table.add_row(
                *[Text(cell, style="bold red" if key == "flags" else "") for (key, _), cell in zip(columns, row)]
            )

    # --- sorting ----------------------------------------------------------------------------------------
    def action_cycle_sort(self) -> None:
        record = self._record
        if record is None:
            return
        keys = ["self_cpu_s", "calls"]
        if record.get("device_total_s") is not None:
            keys.insert(1, "self_device_s")
        current = self._sort_key(record)
        self.sort_key = keys[(keys.index(current) + 1) % len(keys)] if current in keys else keys[0]
        self._refresh_after_sort()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        if key in SORT_LABELS:
            self.sort_key = key
            self._refresh_after_sort()

    def _refresh_after_sort(self) -> None:
        self._shown = None
        if self._store is not None:
            self.show(self._store)


def _profile_events(store: Store) -> list[dict[str, Any]]:
    """Rank 0's answers to profile commands, oldest first (call with the store locked)."""
    return [
        event
        for event in store.rare.get("event", ())
        if event.get("rank", 0) == 0 and str(event.get("command", "")).startswith("profile")
    ]
