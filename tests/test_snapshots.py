"""What every tab of the dashboard looks like, at 80x24 and at 140x45: SVG snapshots, compared cell by cell.

The dashboard replays tests/data/snapshot_run.jsonl, a real two-rank run of examples/ddp.py with
something on every tab (a straggler, a profiled window, learning-rate changes, an exploding-gradient
alert). A replay draws from the record alone: its times, figures, paths and process ids are the ones
recorded, and no sampler of this machine runs. ``python scripts/record_snapshot_run.py`` records it
again, which changes every snapshot.

After a deliberate change to the dashboard's looks, update the snapshots, look at them, and commit them:

    python -m pytest tests/test_snapshots.py --snapshot-update

On a mismatch, snapshot_report.html (in the directory pytest ran from) shows both pictures side by side.
"""

from __future__ import annotations

from pathlib import Path

import pytest

RECORD = Path(__file__).parent / "data" / "snapshot_run.jsonl"
# Each tab (its pane id) and the key that brings it up.
TABS = {
    "overview": "o",
    "system": "s",
    "gradients": "g",
    "hotspots": "h",
    "ranks": "r",
    "controls": "c",
    "log": "l",
}
SIZES = [(80, 24), (140, 45)]


def replay_app():
    from optwatch.app.app import OptwatchApp
    from optwatch.store import Store, read_records

    store = Store()
    store.ingest(list(read_records(RECORD)))
    return OptwatchApp.for_store(store)


@pytest.fixture
def terminal(monkeypatch):
    """The environment of a real terminal of the snapshot's size, whatever terminal runs the tests.

    The app's console takes its width from $COLUMNS, else from whichever of stdin, stdout and stderr is a
    terminal, else 80; the log panes wrap what they are given at that width. Set it as a terminal of the
    snapshot's size would, so that a run from a wide terminal, or under xdist, draws the same lines.
    """

    def size(columns: int, lines: int) -> tuple[int, int]:
        monkeypatch.setenv("COLUMNS", str(columns))
        monkeypatch.setenv("LINES", str(lines))
        monkeypatch.delenv("NO_COLOR", raising=False)
        return columns, lines

    return size


def test_the_snapshots_cover_every_tab_with_its_own_key():
    from optwatch.app.app import OptwatchApp
    from optwatch.app.views import extra_views

    keys = {view.tab_id: view.key for view in extra_views()}
    keys |= {
        binding.action.split("'")[1]: binding.key
        for binding in OptwatchApp.BINDINGS
        if binding.action.startswith("show_tab(")
    }
    assert keys == TABS


@pytest.mark.parametrize("columns,lines", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("tab", TABS)
def test_tab(snap_compare, terminal, tab, columns, lines):
    size = terminal(columns, lines)
    assert snap_compare(replay_app(), press=[TABS[tab]], terminal_size=size)
