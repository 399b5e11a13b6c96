"""A viewer follows a job that restarts on the same endpoint even when it misses the new job's first hello."""

from __future__ import annotations

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
