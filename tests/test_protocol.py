"""The wire form of records: what a viewer decodes is what the job sent, and bad bytes are refused."""

from __future__ import annotations

import array
import dataclasses
import math

import msgpack
import pytest
import torch
from torch import nn

from conftest import new_probe, records_of
from optwatch import protocol
from optwatch.diagnose.gradients import LayerStats


@pytest.fixture(scope="module")
def layers_record() -> dict:
    """A ``layers`` record of a real training step: 20 parameters, as the hub publishes it."""
    import os
    import tempfile

    saved = os.environ.get("OPTWATCH_RUNTIME_DIR")
    os.environ["OPTWATCH_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="ow-wire-")
    try:
        probe = new_probe("wire-test").start()
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(10)])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(12):  # every chunk of the weights measured at least once
            optimizer.zero_grad()
            model(torch.randn(8, 4)).sum().backward()
            optimizer.step()
        return [r for r in records_of(probe) if r["kind"] == protocol.LAYERS][-1]
    finally:
        if saved is not None:
            os.environ["OPTWATCH_RUNTIME_DIR"] = saved


def same(left, right) -> bool:
    """Equal element by element, NaN equal to NaN: a column's values, whatever sequence holds them."""
    if isinstance(left, (list, tuple, array.array)):
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right))
    if isinstance(left, float) and math.isnan(left):
        return isinstance(right, float) and math.isnan(right)
    return left == right and type(left) is type(right)


def test_layer_columns_arrive_intact_and_packed(layers_record):
    record = dict(layers_record)
    n = len(record["names"])
    record["grad_norm"] = [math.nan, math.inf, -math.inf, *record["grad_norm"][3:]]  # a blow-up survives
    record["update_norm"] = [None, *record["update_norm"][1:]]  # not measured for one parameter
    record["numel"] = [2**40, *record["numel"][1:]]

    received = protocol.decode_batch(protocol.encode_batch([record]))[0]

    assert received.keys() == record.keys()
    for key, value in record.items():
        assert same(value, received[key]), key
    # Hundreds of floats per column arrive as one buffer each, not one object each: what keeps a viewer of
    # an 8-rank job within its CPU budget (benchmarks/dashboard_load.py).
    assert n >= 8
    for key in ("grad_norm", "weight_norm", "numel", "zero_frac"):
        assert isinstance(received[key], array.array), key
    assert isinstance(received["names"], tuple)
    assert isinstance(received["update_norm"], list)  # None has no packed form
    # The viewers' reading of the record does not change.
    sent_modules, received_modules = (
        [dataclasses.astuple(m) for m in LayerStats.from_record(r).modules()] for r in (record, received)
    )
    assert same(received_modules, sent_modules)


def test_a_relayed_record_and_a_record_file_hold_the_same_values(layers_record):
    # A hub decodes its ranks' batches and publishes them again; a viewer writes what it receives as JSON.
    at_hub = protocol.decode_batch(protocol.encode_batch([layers_record]))
    relayed = protocol.decode_batch(protocol.encode_batch(at_hub))
    assert isinstance(relayed[0]["grad_norm"], array.array)
    line = protocol.record_to_json_line(relayed[0])
    assert '"grad_norm":[' in line
    from_file = protocol.record_from_json_line(line)
    for key, value in layers_record.items():
        assert same(list(value) if isinstance(value, tuple) else value, from_file[key]), key


def test_a_blown_up_layer_and_step_survive_the_record_file(layers_record):
    """A NaN in a packed column and an infinite loss: the file stays JSON, and reads back as the same floats."""
    blown = dict(layers_record, grad_norm=[math.nan, math.inf, *layers_record["grad_norm"][2:]])
    relayed = protocol.decode_batch(protocol.encode_batch([blown]))[0]
    assert isinstance(relayed["grad_norm"], array.array)
    line = protocol.record_to_json_line(relayed)
    assert '"grad_norm":["NaN","Infinity",' in line
    assert same(protocol.record_from_json_line(line)["grad_norm"], blown["grad_norm"])
    step = protocol.make_record(protocol.STEP, 0, step=3, loss=-math.inf, grad_norm=2.5)
    from_file = protocol.record_from_json_line(protocol.record_to_json_line(step))
    assert from_file["loss"] == -math.inf and from_file["grad_norm"] == 2.5


def test_a_history_page_carries_packed_layers(layers_record):
    """The hub encodes each record once and joins a page of them: the page decodes as a batch would."""
    page = protocol.join_batch([protocol.encode_record(r) for r in (layers_record, layers_record)])
    reply = protocol.decode_request(protocol.encode_request({"ok": True, "page": 0, "pages": 1, "batch": page}))
    records = protocol.decode_batch(reply["batch"])
    assert len(records) == 2 and same(layers_record["grad_norm"], records[1]["grad_norm"])
    assert isinstance(records[0]["grad_norm"], array.array)


@pytest.mark.parametrize(
    "column, complaint",
    [
        (msgpack.ExtType(1, b"\x00" * 7), "malformed packed column"),
        (msgpack.ExtType(9, b"\x00" * 8), "malformed packed column"),
        (msgpack.ExtType(3, b"\xff\xfe"), "undecodable message"),
    ],
)
def test_a_malformed_packed_column_is_refused_with_a_reason(column, complaint):
    payload = msgpack.packb([{"v": 1, "kind": "layers", "rank": 0, "grad_norm": column}])
    with pytest.raises(protocol.ProtocolError, match=complaint):
        protocol.decode_batch(payload)
