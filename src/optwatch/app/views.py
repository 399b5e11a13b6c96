"""The dashboard's tabs beyond Overview and Log. Each capability adds its view here.

A view is a widget with ``show(store)``; the app calls it at each refresh while its tab is visible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from textual.widget import Widget


@dataclass(frozen=True)
class View:
    tab_id: str
    title: str
    key: str
    make: Callable[[], Widget]


def extra_views() -> list[View]:
    from optwatch.app.widgets.controls_panel import ControlsPanel
    from optwatch.app.widgets.gradients_view import GradientsView
    from optwatch.app.widgets.hotspots_view import HotspotsView
    from optwatch.app.widgets.ranks_view import RanksView
    from optwatch.app.widgets.system_view import SystemView

    return [
        View("system", "System", "s", SystemView),
        View("gradients", "Gradients", "g", GradientsView),
        View("hotspots", "Hot spots", "h", lambda: HotspotsView(id="hotspots-view")),
        View("ranks", "Ranks", "r", RanksView),
        View("controls", "Controls", "c", ControlsPanel),
    ]
