"""A viewer follows a job that restarts on the same endpoint even when it misses the new job's first hello."""

from __future__ import annotations

import time

from optwatch.wire.subscriber import Feed


def record(kind: str, seq: int, **fields) -> dict:
    return {"v": 1, "kind": kind, "rank": 0, "seq": seq, "time": 0.0, **fields}


def test_a_new_pid_in_a_hello_starts_the_sequence_over(tmp_path):
    feed = Feed(f"ipc://{tmp_path}/pub.sock", f"ipc://{tmp_path}/ctl.sock")
    try:
        first = [record("hello", 0, pid=100), *(record("step", seq) for seq in range(1, 60))]
        assert len(feed._accept(first)) == 60
        assert feed._accept([record("step", 59)]) == []  # a repeat
        # The restarted job's hello seq 0 was lost while the socket reconnected; its device hello was not.
        again = [record("system", 2), record("hello", 3, pid=200), record("step", 4), record("end", 5)]
        assert [r["kind"] for r in feed._accept(again)] == ["hello", "step", "end"]
        assert feed._accept([record("hello", 6, pid=200)])  # the same job announcing again: nothing resets
        assert feed.last_seq == {0: 6}
    finally:
        feed.close()


def test_live_records_wait_for_a_first_history_that_failed_so_the_viewer_sees_the_run_from_its_start(runtime_dir):
    """A viewer attaches to a running job whose hub refuses its first history requests (a busy hub: here
    the hub's request budget for this viewer, spent just before): the live records arriving meanwhile wait
    for the history, asked again a quarter second later, and the viewer gets every step, in order. They
    used to go on alone, and the history that came a second later was cut to what followed them: the run's
    first 30 steps were lost to this viewer."""
    import torch

    from conftest import new_probe, steps_of, train, wait_for
    from optwatch.hub.server import HISTORY_BURST

    probe = new_probe("late-viewer").start()
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = torch.randn(8, 4), torch.randn(8, 1)
        train(model, optimizer, x, y, steps=30)
        hub = probe.test_hub.hub
        wait_for(lambda: len(steps_of(hub.history.records())) == 30, timeout_s=20, interval_s=0.05)
        feed = Feed(hub.endpoints["pub"], hub.endpoints["ctl"])
        try:
            feed.request("endpoints")
            time.sleep(0.5)  # the live stream's subscription reaches the hub
            train(model, optimizer, x, y, steps=10)
            wait_for(lambda: len(steps_of(hub.history.records())) == 40, timeout_s=20, interval_s=0.05)
            for _ in range(HISTORY_BURST):
                feed.request("history", page=0)
            seen: list[dict] = []
            deadline = time.monotonic() + 10
            while len(steps_of(seen)) < 40 and time.monotonic() < deadline:
                seen.extend(feed.poll(0.1))
            assert [s["step"] for s in steps_of(seen)] == list(range(40))
        finally:
            feed.close()
    finally:
        probe.close()
        probe.test_hub.close()
