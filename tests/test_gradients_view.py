"""The Gradients tab, driven by Textual's pilot, on the records of a real (in-process) training run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import new_probe, records_of, train
from optwatch.app.app import OptwatchApp
from optwatch.app.layer_history import LayerHistory
from optwatch.app.widgets.grad_alerts import GradAlerts
from optwatch.app.widgets.heat_strip import HeatStrip
from optwatch.app.widgets.layer_table import LayerTable, log_sparkline
from optwatch.store import Store


@pytest.fixture(scope="module")
def vanishing_run() -> list[dict]:
    """Records of 50 steps of a 12-layer sigmoid MLP whose early layers barely learn."""
    probe = new_probe("view-test").start()
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(8, 16), nn.Sigmoid()]
    for _ in range(11):
        layers += [nn.Linear(16, 16, bias=False), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(16, 1))
    with torch.no_grad():
        for layer in model[:-1:2]:
            layer.weight.mul_(0.05)  # tiny weights: each sigmoid layer passes back 1/80 of its gradient
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, optimizer, torch.randn(64, 8), torch.randn(64, 1), steps=50)
    return records_of(probe)


def test_layer_history_lines_up_modules_that_come_and_go():
    def record(seq: int, names: list[str]) -> dict:
        n = len(names)
        return {
            "kind": "layers", "rank": 0, "seq": seq, "step": seq, "names": names, "numel": [4] * n,
            "grad_norm": [1.0] * n, "weight_norm": [2.0] * n, "update_norm": [0.02] * n, "zero_frac": [0.0] * n,
        }  # fmt: skip

    history = LayerHistory()
    assert history.update([record(1, ["a.weight"]), record(2, ["a.weight", "b.weight"])])
    assert not history.update([record(2, ["a.weight", "b.weight"])])  # seen already
    assert history.update([record(3, ["b.weight"])])
    assert list(history.steps) == [1, 2, 3] and history.modules == ["b", "a"]
    assert history.column("a", "grad_norm") == [1.0, 1.0, None]
    assert history.column("b", "update_ratio") == [None, 0.01, 0.01]


def test_sparklines_use_a_log_scale():
    assert log_sparkline([1e-6, 1e-3, 1.0], 3) == "▁▅█"
    assert log_sparkline([1e-6, None, 0.0, float("nan"), 1e-3], 6) == " ▁   █"


async def test_the_gradients_tab_shows_the_vanishing_layers_at_80x24(vanishing_run):
    [alert] = [r for r in vanishing_run if r["kind"] == "alert"]
    assert alert["type"] == "vanishing" and alert["layers"][0] == "0"
    store = Store()
    store.ingest(vanishing_run)
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("g")
        await pilot.pause(0.3)
        assert app.query_one("TabbedContent").active == "gradients"
        table = app.query_one(LayerTable)
        assert app.focused is table
        rows = table.rows_shown
        assert [row[1] for row in rows] == [str(2 * i) for i in range(13)]  # model order
        flagged = {row[1] for row in rows if row[0].endswith("!")}
        assert flagged == set(alert["layers"])
        assert app.query_one(GradAlerts).lines[0].startswith(f"vanishing @ step {alert['step']}: gradients vanish")
        heat = app.query_one(HeatStrip)
        low, high = heat.scale
        assert high - low > 4  # the early layers sit orders of magnitude below the last ones
        await pilot.press("t")  # sort by grad norm, largest first
        await pilot.pause(0.1)
        assert table.rows_shown[0][1] == "24" and table.border_title.startswith("layers · sorted by grad norm")
        # Everything fits: no row of the table is cut off by the terminal's width.
        assert max(sum(len(cell) for cell in row) + 2 * len(row) for row in table.rows_shown) <= 80
