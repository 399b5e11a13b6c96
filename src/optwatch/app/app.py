"""The optwatch dashboard: a view of the store, fed by a worker thread, steering back through the session."""

from __future__ import annotations

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, TabbedContent, TabPane
from textual.worker import get_current_worker

from optwatch.app.messages import RunExited
from optwatch.app.views import extra_views
from optwatch.app.widgets.confirm_quit import ConfirmQuit
from optwatch.app.widgets.findings_bar import FindingsBar
from optwatch.app.widgets.hotspots_view import HotspotsView
from optwatch.app.widgets.log_pane import LogPane
from optwatch.app.widgets.run_header import RunHeader
from optwatch.app.widgets.series_chart import SeriesChart
from optwatch.app.widgets.stats_panel import StatsPanel
from optwatch.probe.options import DEFAULT_PROFILE_STEPS
from optwatch.session import ViewerSession
from optwatch.store import Store
from optwatch.wire.subscriber import RequestError

REFRESH_S = 0.25  # 4 Hz: smooth enough to watch, cheap enough for a slow SSH link


class OptwatchApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "optwatch"
    ENABLE_COMMAND_PALETTE = True
    # Short terminals (80x24) drop the second chart; tall ones show both.
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]
    BINDINGS = [
        Binding("q", "request_quit", "Quit"),
        Binding("o", "show_tab('overview')", "Overview"),
        Binding("l", "show_tab('log')", "Log"),
        Binding("p", "profile", "Profile"),
    ]

    def __init__(self, session: ViewerSession | None = None, store: Store | None = None, mode: str = "run"):
        super().__init__()
        self.session = session
        self.store = session.store if session is not None else (store or Store())
        self.mode = mode
        self.detached = False
        self.exit_code: int | None = None
        self._rendered_version = -1
        self.views = extra_views()
        for view in self.views:
            self.bind(view.key, f"show_tab('{view.tab_id}')", description=view.title)

    @classmethod
    def for_store(cls, store: Store) -> OptwatchApp:
        """A dashboard over records already in hand (``optwatch replay``)."""
        return cls(store=store, mode="replay")

    @property
    def owns_process(self) -> bool:
        return self.session is not None and self.session.process is not None

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        with TabbedContent(initial="overview"):
            with TabPane("Overview", id="overview"):
                with Horizontal(id="overview-top"):
                    yield StatsPanel(id="stats")
                    with Vertical(id="charts"):
                        yield SeriesChart("Loss", id="loss-chart")
                        yield SeriesChart("Grad norm", log_y=True, id="grad-chart")
                yield FindingsBar(id="findings")
                yield LogPane(id="overview-log", max_lines=200)
            for view in self.views:
                with TabPane(view.title, id=view.tab_id):
                    yield view.make()
            with TabPane("Log", id="log"):
                yield LogPane(id="full-log")
        yield Footer()

    def on_mount(self) -> None:
        header = self.query_one(RunHeader)
        if self.mode == "replay":
            header.status = "replay"
        if self.session is not None:
            self.follow_feed()
        self.set_interval(REFRESH_S, self.render_views)
        self.render_views()

    # --- feed ---------------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="feed", name="feed")
    def follow_feed(self) -> None:
        worker = get_current_worker()
        session = self.session
        assert session is not None
        while not worker.is_cancelled:
            session.pump(0.1)
            if session.done():
                self.post_message(RunExited(session.process.exit_code() if session.process else None))
                return

    def on_run_exited(self, message: RunExited) -> None:
        self.exit_code = message.exit_code
        header = self.query_one(RunHeader)
        if header.status == "stopping…" or (
            self.session and self.session.process and self.session.process.stop_requested
        ):
            header.status = f"stopped (exit {message.exit_code})"
        elif message.exit_code == 0:
            header.status = "finished (exit 0)"
        else:
            header.status = f"crashed (exit {message.exit_code})"
        self.render_views()

    # --- rendering ----------------------------------------------------------------------------------
    def render_views(self) -> None:
        store = self.store
        if store.version == self._rendered_version:
            return
        self._rendered_version = store.version
        with store.lock:
            state = store.primary
            if state is None:
                return
            steps = [r["step"] for r in state.steps]
            losses = [r.get("loss") for r in state.steps]
            grad_norms = [r.get("grad_norm") for r in state.steps]
            ema = list(state.loss_ema)
            hello = state.hello
        with self.batch_update():
            header = self.query_one(RunHeader)
            if hello:
                header.run_name = f"{hello.get('run_id', '')}  {hello.get('script', '')}"
                device = hello.get("device")
                if device:
                    name = hello.get("device_name")
                    header.device = f"{device} ({name})" if name else device
            if header.status.startswith("waiting") and steps:
                header.status = "running"
            self.query_one(StatsPanel).show(store)
            self.query_one("#loss-chart", SeriesChart).set_series(
                [("loss", steps, losses, "cyan"), ("ema", steps, ema, "orange")]
            )
            self.query_one("#grad-chart", SeriesChart).set_series([("global", steps, grad_norms, "green")])
            self.query_one(FindingsBar).show(store)
            for pane in self.query(LogPane):
                pane.follow(store)
            active = self.query_one(TabbedContent).active
            for view in self.views:
                if view.tab_id == active:
                    self.query_one(f"#{view.tab_id}", TabPane).children[0].show(store)

    # --- actions ------------------------------------------------------------------------------------
    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self._rendered_version = -1  # the new tab has not been drawn with the current data
        self.render_views()

    def action_request_quit(self) -> None:
        process = self.session.process if self.session else None
        if process is None or process.poll() is not None:
            self.exit()
            return
        self.push_screen(ConfirmQuit(), self._on_quit_choice)

    def _on_quit_choice(self, choice: str | None) -> None:
        if choice == "stop":
            self.query_one(RunHeader).status = "stopping…"
            self.stop_run()
        elif choice == "detach":
            self.detached = True
            self.exit()

    def action_profile(self) -> None:
        """Ask the run for a profiler window over the next few steps; the Hot spots tab shows how it goes."""
        view = next(iter(self.query(HotspotsView)), None)
        if view is not None:
            self.action_show_tab("hotspots")
        if self.session is None or self.mode == "replay":
            self.notify("a replay cannot be profiled", severity="warning")
            return
        if self.session.process is not None and self.session.process.poll() is not None:
            self.notify("the run has ended: nothing left to profile", severity="warning")
            return
        if view is not None:
            view.note(f"asking the run to profile the next {DEFAULT_PROFILE_STEPS} steps…", self.store)
        self.request_profile(DEFAULT_PROFILE_STEPS)

    @work(thread=True, exclusive=True, group="profile", name="profile")
    def request_profile(self, steps: int) -> None:
        assert self.session is not None
        try:
            reply = self.session.feed.request("profile", steps=steps)
        except RequestError as exc:
            self.post_message(HotspotsView.ProfileReply(None, str(exc)))
            return
        self.post_message(HotspotsView.ProfileReply(reply, None))

    def on_hotspots_view_profile_reply(self, message: HotspotsView.ProfileReply) -> None:
        view = next(iter(self.query(HotspotsView)), None)
        if message.error is not None:
            self.notify(f"profiling: {message.error}", severity="warning")
            text = f"not profiling: {message.error}"
        else:
            text = f"{(message.reply or {}).get('message', 'profiling soon')}…"
        if view is not None:
            view.note(text, self.store)

    @work(thread=True, exclusive=True, group="stop", name="stop")
    def stop_run(self) -> None:
        assert self.session is not None and self.session.process is not None
        self.session.process.stop()
        self.call_from_thread(self.exit)
