"""The optwatch dashboard: a view of the store, fed by a worker thread, steering back through the session."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Footer, TabbedContent, TabPane
from textual.worker import get_current_worker

from optwatch import protocol
from optwatch.app import chart_series
from optwatch.app.messages import CommandAnswered, FeedUpdated, RecordingStopped, RunExited
from optwatch.app.views import extra_views
from optwatch.app.widgets.command_input import CommandInput
from optwatch.app.widgets.confirm_quit import ConfirmQuit
from optwatch.app.widgets.findings_bar import FindingsBar
from optwatch.app.widgets.hotspots_view import HotspotsView
from optwatch.app.widgets.log_pane import LogPane
from optwatch.app.widgets.run_header import FIRST_STEP_STATUS, WAITING_PREFIXES, RunHeader
from optwatch.app.widgets.series_chart import SeriesChart
from optwatch.app.widgets.stats_panel import StatsPanel
from optwatch.options import DEFAULT_PROFILE_STEPS
from optwatch.session import ViewerSession, job_gone
from optwatch.store import Store
from optwatch.summary import waiting_text

# Redraws follow the data, throttled: figures at most ~7 times a second (what is on screen stays within
# a quarter second of what the job published, at a tenth of a core under a fast 8-rank job); charts at
# most once a second and, since plotext takes tens of milliseconds a picture, never more often than
# keeps their drawing under CHART_CPU_SHARE of a core.
MIN_REDRAW_S = 0.15
CHART_REDRAW_S = 1.0
CHART_CPU_SHARE = 0.02
IDLE_REDRAW_S = 1.0
STEERING_ACTIONS = frozenset({"toggle", "pause", "resume", "command", "profile"})


@dataclass
class Panes:
    """The widgets a redraw touches, found once: a DOM query costs about a millisecond, several times a second."""

    header: RunHeader
    stats: StatsPanel
    findings: FindingsBar
    logs: list[LogPane]
    tabs: TabbedContent
    loss_chart: SeriesChart
    grad_chart: SeriesChart
    views: dict[str, Widget]
    """Each extra view's widget, by its tab id."""


def ended_status(ends: list[dict[str, Any]]) -> str:
    """The header of a job all of whose ranks ended, by their end records: ``finished (exit 0)``, ``stopped
    (exit 130)``, or ``failed: rank 1 RuntimeError: the batch was bad`` (the first rank to end on an error, or
    else with a failing code; a crash under torchrun read "finished (exit 1)", with no word of which or why)."""
    codes = {end.get("exit_code") for end in ends}
    if codes <= {0}:
        return "finished (exit 0)"
    if codes == {protocol.INTERRUPTED}:
        return f"stopped (exit {protocol.INTERRUPTED})"
    if codes <= {0, None} and not any(end.get("error") for end in ends):
        return "ended (its exit code unknown)"  # (a plain python run's sys.exit: docs/records.md)
    # The first to end that way: under torchrun the others are ended after it (SIGTERM, read as an error too).
    in_order = sorted(ends, key=lambda end: (end.get("time") or 0.0, end.get("rank", 0)))
    failed = next((end for end in in_order if end.get("error")), None) or next(
        (end for end in in_order if end.get("exit_code") not in (0, protocol.INTERRUPTED)), in_order[0]
    )
    said = failed.get("error") or f"exit {failed.get('exit_code')}"
    return f"failed: rank {failed.get('rank', 0)} {said}" if len(ends) > 1 else f"failed: {said}"


class OptwatchApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "optwatch"
    ENABLE_COMMAND_PALETTE = True
    # Short terminals (80x24) drop the second chart; tall ones show both.
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]
    BINDINGS = [
        Binding("q", "request_quit", "Quit"),
        # The tabs' keys are their names' first letters, and the tab bar shows the names: the footer keeps its
        # 80 columns for the keys nothing else on screen shows (at 80 it cut off at ": Com").
        Binding("o", "show_tab('overview')", "Overview", show=False),
        Binding("l", "show_tab('log')", "Log", show=False),
        Binding("a", "toggle('amp')", "AMP"),
        Binding("b", "toggle('cudnn_benchmark')", "cudnn"),
        Binding("space", "pause", "Pause"),
        Binding("space", "resume", "Resume"),  # (the one of the two the run's state allows: check_action)
        Binding("colon", "command", "Command"),
        Binding("p", "profile", "Profile"),
        # Where the keys above cannot steer (a replay, a run that has ended) these say why, off the footer.
        Binding("a,b,space,colon", "say_unsteerable('steer')", show=False),
        Binding("p", "say_unsteerable('profile')", show=False),
        Binding("z", "zoom", "Zoom"),
        Binding("y", "loss_scale", "Log loss", show=False),  # (in the README's keys: the footer is full)
        Binding("B", "baseline", "Baseline"),
    ]

    def __init__(self, session: ViewerSession | None = None, store: Store | None = None, mode: str = "run"):
        super().__init__()
        self.session = session
        self.store = session.store if session is not None else (store or Store())
        self.mode = mode
        self.detached = False
        self._shown_paused = False
        """Whether the run was paused when the views were last drawn: the footer offers Resume then."""
        self._run_over = False
        self.exit_when_the_run_ends = False
        """Set when `optwatch run` was told to stop (SIGTERM): the dashboard then ends with the training."""
        self.exit_code: int | None = None
        self._rendered_version = -1
        self._last_redraw = 0.0
        self._last_chart_redraw = 0.0
        self._charts_version = -1
        self._redraw_pending = False
        # Set by the feed thread when it posts FeedUpdated, cleared by the UI thread when it takes it: one
        # message waiting stands for every batch that arrives meanwhile (each post wakes the event loop).
        self._feed_update_queued = threading.Event()
        self._panes: Panes | None = None
        self.zoom = chart_series.ZOOMS[0]
        self.log_loss = False
        """The loss chart on a log scale (``y``): a loss that fell by orders of magnitude reads flat on a linear one."""
        self.baseline: chart_series.Baseline | None = None
        self.views = extra_views()
        for view in self.views:
            self.bind(view.key, f"show_tab('{view.tab_id}')", description=view.title, show=False)

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
                    with Vertical(id="stats-column"):
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
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._panes = Panes(
            header=self.query_one(RunHeader),
            stats=self.query_one(StatsPanel),
            findings=self.query_one(FindingsBar),
            logs=list(self.query(LogPane)),
            tabs=self.query_one(TabbedContent),
            loss_chart=self.query_one("#loss-chart", SeriesChart),
            grad_chart=self.query_one("#grad-chart", SeriesChart),
            views={view.tab_id: self.query_one(f"#{view.tab_id}", TabPane).children[0] for view in self.views},
        )
        if self.mode == "replay":
            self._panes.header.status = "replay"
            self._no_more_profiles()
        if self.session is not None:
            self.follow_feed()
        self.set_interval(IDLE_REDRAW_S, self.render_views)
        self.render_views()

    # --- feed ---------------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="feed", name="feed")
    def follow_feed(self) -> None:
        worker = get_current_worker()
        session = self.session
        assert session is not None
        # An app that fails while mounting ends without cancelling its workers: its return code says so.
        while not worker.is_cancelled and self.return_code is None:
            records, _ = session.pump(0.1)
            if records and not self._feed_update_queued.is_set():
                self._feed_update_queued.set()
                self.post_message(FeedUpdated())
            stopped = session.recording_stopped()
            if stopped:
                self.post_message(RecordingStopped(stopped))
            while session.answers:
                self.post_message(CommandAnswered(*session.answers.popleft()))
            if session.done():
                process = session.process
                killed_by = process.killed_by() if process is not None else None
                self.post_message(RunExited(session.exit_code(), killed_by, session.ending_line()))
                return

    def on_feed_updated(self, message: FeedUpdated) -> None:
        # Cleared before the store is read, so records ingested from now on post a message of their own.
        self._feed_update_queued.clear()
        wait = MIN_REDRAW_S - (time.monotonic() - self._last_redraw)
        if wait <= 0:
            self.render_views()
        elif not self._redraw_pending:
            self._redraw_pending = True
            self.set_timer(wait, self._pending_redraw)

    def _pending_redraw(self) -> None:
        self._redraw_pending = False
        self.render_views()

    def on_run_exited(self, message: RunExited) -> None:
        self.exit_code = message.exit_code
        self._run_over = True
        if not self.screen_stack:
            return  # (the dashboard is closing: `q` stopped the run, whose end came after its screens went)
        self.refresh_bindings()
        self._no_more_profiles()
        if self.exit_when_the_run_ends:
            self.exit()
            return
        self._rendered_version = -1  # draw the final state in full
        panes = self._live_panes()
        if panes is None:
            return
        header = panes.header
        if (
            header.status == "stopping…"
            or message.exit_code == protocol.INTERRUPTED  # a `stop` command, or Ctrl-C
            or (self.session and self.session.process and self.session.process.stop_requested)
        ):
            header.status = f"stopped (exit {message.exit_code})"
        elif message.exit_code == 0:
            header.status = "finished (exit 0)"
        elif message.killed_by:
            header.status = f"killed by {message.killed_by} (exit {message.exit_code})"
        else:
            header.status = f"crashed (exit {message.exit_code})"
        if message.killed_by and message.ending and not header.status.startswith("stopped"):
            # (the OOM killer's SIGKILL says nothing of its own: the run just vanishes)
            self.notify(message.ending.removeprefix("optwatch: "), severity="error", timeout=30)
        self.render_views()

    # --- rendering ----------------------------------------------------------------------------------
    def _live_panes(self) -> Panes | None:
        """The widgets, or None before they are mounted and once the app has begun tearing them down.

        The feed worker posts from its own thread, so a RunExited or FeedUpdated can arrive after the
        widgets are gone; drawing then would fail in the middle of a clean exit.
        """
        panes = self._panes
        return panes if panes is not None and panes.header.is_attached else None

    def render_views(self, force_charts: bool = False) -> None:
        store = self.store
        now = time.monotonic()
        self._show_hub_silence(now)
        self._show_waiting(now)
        charts_due = force_charts or (
            store.version != self._charts_version and now - self._last_chart_redraw >= self._chart_interval()
        )
        if store.version == self._rendered_version and not charts_due:
            return
        self._rendered_version = store.version
        self._last_redraw = now
        with store.lock:
            state = store.primary
            if state is None:
                return
            hello = state.hello
            has_steps = bool(state.steps)
            ends = [s.end for s in store.ranks.values()]
        panes = self._live_panes()
        if panes is None:
            return
        header = panes.header
        with self.batch_update():
            if hello:
                header.run_name = f"{hello.get('run_id', '')}  {hello.get('script', '')}"
                device = hello.get("device")
                if device:
                    name = hello.get("device_name")
                    header.device = f"{device} ({name})" if name else device
            live = self._live_status
            if (header.status.startswith("waiting") and has_steps) or header.status.startswith("paused"):
                header.status = live
            pause = self._pause_event() if self.mode != "replay" and has_steps else None
            if (pause is not None) != self._shown_paused:
                self._shown_paused = pause is not None
                self.refresh_bindings()  # the footer's space: Pause or Resume
            if pause is not None and header.status == live:
                since = time.strftime("%H:%M:%S", time.localtime(pause.get("time") or 0))
                header.status = f"paused by {pause.get('source') or '?'} since {since}"
            if self.mode == "attach" and ends and all(ends):
                header.status = ended_status(ends)
            panes.stats.show(store)
            if charts_due:
                self._last_chart_redraw = now
                self._charts_version = store.version
                self._draw_charts(panes)
            panes.findings.show(store)
            for pane in panes.logs:
                pane.follow(store)
            view = panes.views.get(panes.tabs.active)
            if view is not None:
                view.show(store)

    @property
    def _live_status(self) -> str:
        """The header's status while the run goes on as it should."""
        return "attached" if self.mode == "attach" else "running"

    def _show_waiting(self, now: float) -> None:
        """No step for a while (an evaluation, a checkpoint, a hang): the header says so and where the training
        is, in place of "running", until a step ends."""
        panes = self._live_panes()
        if panes is None or self.mode == "replay":
            return
        header = panes.header
        live = self._live_status
        waiting = self.store.waiting(now=now)
        shown = header.status.startswith(WAITING_PREFIXES)
        if waiting is not None and (shown or header.status in (live, FIRST_STEP_STATUS)):
            # (each rank's place, as headless says it: the stuck rank's, where rank 0 waits for it)
            header.status = waiting_text(waiting, self.store.waiting_ranks(now=now))
        elif waiting is None and shown:
            primary = self.store.primary
            header.status = live if primary is not None and primary.steps else FIRST_STEP_STATUS

    def _show_hub_silence(self, now: float) -> None:
        """A live job whose hub stopped answering says so in the header (its ranks train on), until it is back."""
        panes = self._live_panes()
        if panes is None or self.mode == "replay":
            return
        silent = self.store.hub_silence(now)
        header = panes.header
        if silent is not None and job_gone(self.store):
            # (torchrun ended the job after a rank was killed: "training goes on" stood there for good)
            header.status = "stopped without an end record: the job's processes on this machine are gone"
        elif silent is not None:
            header.status = f"hub gone for {silent:.0f} s (training goes on)"
        elif header.status.startswith("hub gone"):
            header.status = self._live_status

    def _chart_interval(self) -> float:
        panes = self._panes
        charts = (panes.loss_chart, panes.grad_chart) if panes else ()
        cost = sum(chart.draw_cost_s for chart in charts if chart.display)
        return max(CHART_REDRAW_S, cost / CHART_CPU_SHARE)

    def _draw_charts(self, panes: Panes) -> None:
        store = self.store
        with store.lock:
            losses, loss_title = chart_series.loss_series(store, self.zoom, self.baseline)
            grads, grad_title = chart_series.grad_series(store, self.zoom)
            controls, alerts = chart_series.markers(store)
        panes.loss_chart.log_y = self.log_loss
        if self.log_loss:
            loss_title += " · log scale"
        for chart, series, title in ((panes.loss_chart, losses, loss_title), (panes.grad_chart, grads, grad_title)):
            chart.title = title
            chart.markers = controls
            chart.alert_markers = alerts
            chart.set_series(series)

    def action_zoom(self) -> None:
        """The charts' next zoom: recent steps (following the live edge), the wider window, the whole run."""
        self.zoom = chart_series.next_zoom(self.zoom)
        self.notify(f"charts: {self.zoom.title('steps').removeprefix('steps · ')}", timeout=2)
        self.render_views(force_charts=True)

    def action_loss_scale(self) -> None:
        """The loss chart's y axis: linear, or log (where values at or under 0 are left out, as it says)."""
        self.log_loss = not self.log_loss
        scale = "log scale (values at or under 0 left out)" if self.log_loss else "linear scale"
        self.notify(f"loss chart: {scale}", timeout=2)
        self.render_views(force_charts=True)

    def action_baseline(self) -> None:
        """Pick a recorded run to draw faintly under the live loss curve (or none)."""
        from optwatch.app.widgets.run_picker import RunPicker
        from optwatch.runs import list_runs, runs_root

        with self.store.lock:
            own = (self.store.primary.hello.get("run_id") if self.store.primary else None) or ""
        entries = [entry for entry in list_runs() if entry.run_id != own]
        if not entries:
            self.notify(f"no other recorded runs in {runs_root()}", severity="warning", markup=False)
            return

        def chosen(run_id: str | None) -> None:
            if run_id == "":
                self.baseline = None
                self.render_views(force_charts=True)
            elif run_id:
                self.load_baseline(next(e for e in entries if e.run_id == run_id).directory)

        self.push_screen(RunPicker(entries, self.baseline.run_id if self.baseline else None), chosen)

    @work(thread=True, exclusive=True, group="baseline", name="baseline")
    def load_baseline(self, directory) -> None:
        """Read a past run's loss (a file read: off the UI thread)."""
        from optwatch.protocol import ProtocolError
        from optwatch.runhistory import RunHistory
        from optwatch.runs import read_run_records

        whole = RunHistory()
        try:
            for record in read_run_records(directory):
                if record.get("kind") == "step" and record.get("rank", 0) == 0:
                    whole.add_step(record)
        except (OSError, ProtocolError) as exc:
            self.call_from_thread(self.notify, f"cannot read {directory}: {exc}", severity="error", markup=False)
            return
        loss = whole.series.get("loss")
        steps, means, _, _ = loss.points() if loss else ([], [], [], [])
        self.call_from_thread(self._show_baseline, chart_series.Baseline(directory.name, steps, means))

    def _show_baseline(self, baseline: chart_series.Baseline) -> None:
        self.baseline = baseline
        self.render_views(force_charts=True)

    def unsteerable_reason(self, action: str = "steer") -> str | None:
        """Why the keys that steer the run (``profile``: ``p``) do nothing here, or None where they steer."""
        if self.mode == "replay":
            return "a replay cannot be profiled" if action == "profile" else "a replay cannot be steered"
        # (a process that has just exited is over before its RunExited message comes)
        if self._run_over or (self.owns_process and self.session.process.poll() is not None):
            ended = "nothing left to profile" if action == "profile" else "it can no longer be steered"
            return f"the run has ended: {ended}"
        return None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # A replay, or a run that has ended, cannot be steered: the footer shows only the keys that do something,
        # and the same keys, pressed, say why they do nothing.
        if action == "say_unsteerable":
            return self.unsteerable_reason() is not None
        if action in STEERING_ACTIONS and self.unsteerable_reason() is not None:
            return False
        if action in ("pause", "resume"):
            return (action == "resume") == self._shown_paused
        return True

    def action_say_unsteerable(self, action: str) -> None:
        reason = self.unsteerable_reason(action)
        if reason is not None:
            self.notify(reason, severity="warning", timeout=4)

    # --- steering -----------------------------------------------------------------------------------
    def send_command(self, text: str) -> None:
        if self.session is None:
            self.notify("a replay cannot be steered", severity="warning")
            return
        if self._run_over:  # (the command palette still lists the commands)
            self.notify(f"the run has ended: {text} was not sent", severity="warning")
            return
        self.session.send_command(text)
        self.notify(f"sent {text}; it applies at the next step boundary", timeout=3)

    def on_command_answered(self, message: CommandAnswered) -> None:
        if message.reply.get("unknown"):
            self.notify(
                f"{message.command}: {message.reply.get('error')} from the job's hub; it may still apply the "
                "command: the loss chart marks it if it does",
                severity="warning",
                timeout=12,
                markup=False,
            )
        elif not message.reply.get("ok"):
            self.notify(f"{message.command} rejected: {message.reply.get('error')}", severity="error", timeout=8)

    def on_recording_stopped(self, message: RecordingStopped) -> None:
        self.notify(message.reason, severity="warning", timeout=30, markup=False)  # a path may hold "[...]"

    def _current(self, field: str) -> bool:
        with self.store.lock:
            state = self.store.primary
            last = state.last_step if state else None
            return bool(last and last.get(field))

    def _pause_event(self) -> dict | None:
        """The accepted pause in effect (its event), or None when the run is not paused."""
        with self.store.lock:
            for event in reversed(self.store.rare.get("event", ())):
                command = str(event.get("command", ""))
                if (
                    event.get("status") == "accepted"
                    and event.get("rank", 0) == 0
                    and command.startswith(("pause", "resume"))
                ):
                    return event if command.startswith("pause") else None
        return None

    def action_toggle(self, field: str) -> None:
        self.send_command(f"{field}={'off' if self._current(field) else 'on'}")

    def action_pause(self) -> None:
        self.send_command("pause")

    def action_resume(self) -> None:
        self.send_command("resume")

    def action_command(self, initial: str = "") -> None:
        def sent(text: str | None) -> None:
            if text:
                self.send_command(text)

        self.push_screen(CommandInput(initial, current_lr=self._last_lr()), sent)

    def _last_lr(self) -> float | None:
        """Param group 0's learning rate in the last step record, when it is one number."""
        with self.store.lock:
            state = self.store.primary
            lr = state.last_step.get("lr") if state and state.last_step else None
        return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        if self.session is None:
            return
        yield SystemCommand("Set learning rate…", "lr=V for every param group", lambda: self.action_command("lr="))
        yield SystemCommand("Scale learning rate…", "lr*=F", lambda: self.action_command("lr*="))
        yield SystemCommand("Set one group's learning rate…", "lr[G]=V", lambda: self.action_command("lr[0]="))
        for field, title in (("amp", "AMP"), ("cudnn_benchmark", "cudnn.benchmark")):
            for state in ("on", "off"):
                command = f"{field}={state}"
                yield SystemCommand(f"{title} {state}", command, lambda c=command: self.send_command(c))
        yield SystemCommand("Pause training", "pause at the next step boundary", lambda: self.send_command("pause"))
        yield SystemCommand("Resume training", "resume", lambda: self.send_command("resume"))
        yield SystemCommand("Profile 5 steps", "profile=5", lambda: self.send_command("profile=5"))
        yield SystemCommand(
            "Stop training cleanly", "stop at the next step boundary", lambda: self.send_command("stop")
        )
        yield SystemCommand("Any command…", "type a command", self.action_command)

    # --- actions ------------------------------------------------------------------------------------
    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self._rendered_version = -1  # the new tab has not been drawn with the current data
        self.render_views(force_charts=True)

    async def action_quit(self) -> None:
        """Textual's own Quit (ctrl+q, the command palette's "Quit") asks first too: quitting stops the run."""
        self.action_request_quit()

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

    def _no_more_profiles(self) -> None:
        for view in self.query(HotspotsView):
            view.can_profile = False  # (its "p profiles again" would promise what p cannot do)

    def action_profile(self) -> None:
        """Ask the run for a profiler window over the next few steps; the Hot spots tab shows how it goes."""
        view = next(iter(self.query(HotspotsView)), None)
        if view is not None:
            self.action_show_tab("hotspots")
            view.note(f"asking the run to profile the next {DEFAULT_PROFILE_STEPS} steps…", self.store)
        self.send_command(f"profile={DEFAULT_PROFILE_STEPS}")

    @work(thread=True, exclusive=True, group="stop", name="stop")
    def stop_run(self) -> None:
        assert self.session is not None and self.session.process is not None
        self.session.process.stop()
        self.call_from_thread(self.exit)
