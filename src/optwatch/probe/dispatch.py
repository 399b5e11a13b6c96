"""The probe's plugins, tabulated per callback: who is called at each point of a step.

Several callbacks run at every step and most plugins implement few of them, so the table is made once (and
again when a plugin changes its ``idle_callbacks`` or is switched off), in two versions: one for detail
steps, one for the steps between, where a plugin gets only the ``between_detail_steps`` it names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from optwatch.probe.plugin import CALLBACKS, PER_STEP_CALLBACKS, ProbeContext, ProbePlugin, as_optwatch_work

log = logging.getLogger(__name__)

Callbacks = dict[str, list[tuple[str, Callable[..., Any]]]]


class Dispatch:
    """Calls the plugins' callbacks; a plugin that raises is switched off and logged once, and the training
    goes on (a KeyboardInterrupt, a requested stop, goes through)."""

    def __init__(self, context: ProbeContext, plugins: list[ProbePlugin]) -> None:
        self._context = context
        self._plugins = list(plugins)
        self._broken: set[str] = set()
        self.every: Callbacks = {}
        """Per callback, the working plugins that implement it, on a detail step."""
        self._between: Callbacks = {}
        self.active: Callbacks = {}
        """The table of the step now running: ``every`` on a detail step, else the one for the steps between."""
        self.tabulate(detailed=True)

    @property
    def plugins(self) -> list[ProbePlugin]:
        return self._plugins

    def replace(self, plugins: list[ProbePlugin], detailed: bool) -> None:
        self._plugins = list(plugins)
        self.tabulate(detailed)

    def tabulate(self, detailed: bool) -> None:
        def implementing(method: str, light: bool, idle_too: bool = False) -> list[tuple[str, Callable[..., Any]]]:
            chosen = []
            for plugin in self._plugins:
                if plugin.name in self._broken or (method in plugin.idle_callbacks and not idle_too):
                    continue
                if getattr(type(plugin), method, None) is getattr(ProbePlugin, method, None):
                    continue
                if light and plugin.between_detail_steps is not None and method not in plugin.between_detail_steps:
                    continue
                chosen.append((plugin.name, getattr(plugin, method)))
            return chosen

        self.every = {method: implementing(method, False) for method in CALLBACKS}
        self._between = {method: implementing(method, method in PER_STEP_CALLBACKS) for method in CALLBACKS}
        self._boundary_for_commands = implementing("at_boundary", False, idle_too=True)
        self.select(detailed)

    def select(self, detailed: bool) -> None:
        """The step now beginning is a detail step, or not."""
        self.active = self.every if detailed else self._between

    def after_step(self, record: dict[str, Any], before_detail: bool) -> None:
        """``after_step``: from the detail steps' table at a detail step and at the step before one (where a
        plugin prepares for it), else from the table of the steps between."""
        table = self.every if before_detail else self._between
        if table["after_step"]:
            self._call_in_step(table["after_step"], "after_step", record)

    def at_boundary(self, commands_waiting: bool) -> list[Any]:
        """``at_boundary``: while commands wait, of every plugin that implements it, idle or not (they come
        in on another thread: nobody has yet told a plugin that it has something to do)."""
        callbacks = self._boundary_for_commands if commands_waiting else self.active["at_boundary"]
        return self._call_in_step(callbacks, "at_boundary") if callbacks else []

    def call(self, method: str, *args: Any) -> list[Any]:
        """Run one callback of every plugin that implements it (in the table of the step now running)."""
        return self._call(self.active[method], method, *args)

    def _call(self, callbacks: list[tuple[str, Callable[..., Any]]], method: str, *args: Any) -> list[Any]:
        results = []
        for name, callback in callbacks:
            try:
                results.append(callback(self._context, *args))
            except Exception:
                self.switch_off(name, method)
        return results

    def call_in_step(self, method: str, *args: Any) -> list[Any]:
        """``call`` from a hook, inside an ``optwatch`` range while a profiler records (the hook charges the
        time to optwatch's cost)."""
        callbacks = self.active[method]
        return self._call_in_step(callbacks, method, *args) if callbacks else []

    def _call_in_step(self, callbacks: list[tuple[str, Callable[..., Any]]], method: str, *args: Any) -> list[Any]:
        if torch.autograd.profiler._is_profiler_enabled:
            with as_optwatch_work():
                return self._call(callbacks, method, *args)
        return self._call(callbacks, method, *args)

    def switch_off(self, plugin: str, where: str) -> None:
        """Call it inside the ``except``: the traceback is logged with the plugin's name."""
        if plugin in self._broken:
            return
        self._broken.add(plugin)
        self.tabulate(self.active is self.every)
        log.exception("optwatch: %s failed in %s and is switched off; training goes on", plugin, where)
        if where != "close":
            for candidate in self._plugins:
                if candidate.name == plugin:
                    try:
                        candidate.close(self._context)
                    except Exception:
                        log.exception("optwatch: %s failed to close; its hooks may stay", plugin)
