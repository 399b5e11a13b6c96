"""Messages between a training job and its viewers: versioned dicts, msgpack on the wire, JSON lines on disk.

No torch and no textual here: both sides import this module.

Every record is a flat-ish dict with at least ``v`` (protocol version), ``kind``, ``rank``, ``seq``
(per-rank, increasing across all kinds, so viewers can spot gaps) and ``time`` (unix seconds).
A wire message is a msgpack list of records. Nothing is ever unpickled.

Per-layer columns (a ``layers`` record has a name, a count and five figures for each of hundreds of
parameters) travel packed: floats and ints as little-endian arrays, names as one block of text, so a
viewer under an 8-rank job decodes a few buffers per record instead of thousands of objects. Decoded,
they are ``array.array`` and ``tuple``: sequences like the lists they were; a record file has lists.
"""

from __future__ import annotations

import array
import json
import math
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import msgpack

PROTOCOL_VERSION = 1

# Kinds of record. Later capabilities add to this set; viewers ignore kinds they do not know.
HELLO = "hello"  # run metadata, once per rank at start
STEP = "step"  # one optimizer step
LOG = "log"  # a line of the script's stdout/stderr
END = "end"  # the rank finished (or the supervisor saw the process exit)
ALERT = "alert"
VERDICT = "verdict"
HOTSPOTS = "hotspots"
EVENT = "event"
SYSTEM = "system"
LAYERS = "layers"
HUB = "hub"  # the hub's own figures (its CPU time, its memory), every few seconds

# Largest wire message a viewer accepts; anything bigger is a bug or an attack, not telemetry.
MAX_WIRE_BYTES = 16 * 1024 * 1024

# Framing. The hub's PUB socket carries two topics: records for viewers, and commands (and rank 0's
# decisions) for the ranks. A rank's PUSH to the hub sends [FRAME_RECORDS, batch] or [FRAME_DECISION, request].
TOPIC_RECORDS = b"r"
TOPIC_CONTROL = b"c"
FRAME_RECORDS = b"r"
FRAME_DECISION = b"d"
HUB_ORIGIN = -2
"""The ``origin`` of records the hub makes itself (alerts, verdicts, the script's output): their ``seq``
counts in the hub's own sequence."""


class ProtocolError(ValueError):
    """A message that does not follow the protocol."""


def finite(value: Any) -> bool:
    """A number a figure can be computed from: not None, NaN, Inf, a bool or a string."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- packed columns ----------------------------------------------------------------------------------
_FLOATS, _INTS, _NAMES = 1, 2, 3  # msgpack extension type codes
_PACKED_MIN = 8  # shorter lists are cheaper as they are
_NAME_SEPARATOR = "\n"
# A job sends the same names with every record: each block is decoded once. Bounded, whatever a peer sends.
_names_seen: dict[bytes, tuple[str, ...]] = {}
_NAMES_SEEN_MAX = 16
_NAMES_SEEN_MAX_BYTES = 1 << 20


def _packed_column(values: Any) -> Any:
    """``values`` as a packed array or block of names, or as they are when they are not all of one kind.

    Integers stay integers and a column with any float becomes floats; None or anything else leaves it a list.
    """
    if not isinstance(values, (list, tuple)) or len(values) < _PACKED_MIN:
        return values
    if type(values[0]) is bool:
        return values  # flags stay flags
    if type(values[0]) is str:
        try:
            text = _NAME_SEPARATOR.join(values)
        except TypeError:
            return values
        if text.count(_NAME_SEPARATOR) != len(values) - 1:
            return values  # a name with the separator in it
        return msgpack.ExtType(_NAMES, text.encode())
    try:
        return _packed_array(array.array("q", values))
    except OverflowError:
        return values  # integers past 64 bits stay exact in a list
    except TypeError:
        pass  # not all integers
    try:
        return _packed_array(array.array("d", values))
    except (TypeError, OverflowError):
        return values


def _packed_array(column: array.array) -> msgpack.ExtType:
    if sys.byteorder != "little":
        column = array.array(column.typecode, column)
        column.byteswap()
    return msgpack.ExtType(_FLOATS if column.typecode == "d" else _INTS, column.tobytes())


def _wire_form(record: dict[str, Any]) -> dict[str, Any]:
    if record.get("kind") != LAYERS:
        return record
    return {key: _packed_column(value) for key, value in record.items()}


def _pack_default(value: Any) -> Any:
    """Columns decoded from the wire go out again packed (a hub relays its ranks' records)."""
    if isinstance(value, array.array) and value.typecode in ("d", "q"):
        return _packed_array(value)
    raise TypeError(f"cannot send a {type(value).__name__}")


def _unpack_column(code: int, data: bytes) -> Any:
    if code == _NAMES:
        names = _names_seen.get(data)
        if names is None:
            names = tuple(data.decode().split(_NAME_SEPARATOR))
            if len(data) <= _NAMES_SEEN_MAX_BYTES:
                if len(_names_seen) >= _NAMES_SEEN_MAX:
                    _names_seen.clear()
                _names_seen[data] = names
        return names
    if code not in (_FLOATS, _INTS) or len(data) % 8:
        raise ProtocolError(f"malformed packed column (type {code}, {len(data)} bytes)")
    column = array.array("d" if code == _FLOATS else "q")
    column.frombytes(data)
    if sys.byteorder != "little":
        column.byteswap()
    return column


def _packb(message: Any) -> bytes:
    return msgpack.packb(message, use_bin_type=True, default=_pack_default)


def _unpackb(payload: bytes) -> Any:
    return msgpack.unpackb(
        payload, raw=False, strict_map_key=True, max_bin_len=MAX_WIRE_BYTES, max_ext_len=MAX_WIRE_BYTES,
        ext_hook=_unpack_column,
    )  # fmt: skip


def encode_batch(records: list[dict[str, Any]]) -> bytes:
    return _packb([_wire_form(record) for record in records])


def encode_record(record: dict[str, Any]) -> bytes:
    """One record as an element of a batch: ``join_batch`` makes a batch of such elements without encoding
    them again."""
    return _packb(_wire_form(record))


def join_batch(encoded: list[bytes]) -> bytes:
    """The batch (a msgpack array) of records already encoded one by one with ``encode_record``."""
    count = len(encoded)
    if count < 16:
        header = bytes([0x90 | count])
    elif count < 1 << 16:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return header + b"".join(encoded)


def decode_batch(payload: bytes) -> list[dict[str, Any]]:
    if len(payload) > MAX_WIRE_BYTES:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the {MAX_WIRE_BYTES} byte limit")
    try:
        records = _unpackb(payload)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable message: {exc}") from exc
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ProtocolError("a message must be a list of records")
    for record in records:
        check_record(record)
    return records


def check_record(record: dict[str, Any]) -> None:
    version = record.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r} is not supported (this optwatch speaks {PROTOCOL_VERSION})")
    if not isinstance(record.get("kind"), str):
        raise ProtocolError("record without a 'kind'")


def encode_request(request: dict[str, Any]) -> bytes:
    """A request or a reply; a reply's ``records`` (the history) go packed like a batch."""
    if isinstance(request.get("records"), list):
        request = {**request, "records": [_wire_form(record) for record in request["records"]]}
    return _packb({"v": PROTOCOL_VERSION, **request})


def decode_request(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_WIRE_BYTES:
        raise ProtocolError("request too large")
    try:
        request = _unpackb(payload)
    except Exception as exc:
        raise ProtocolError(f"undecodable request: {exc}") from exc
    if not isinstance(request, dict) or request.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("request is not a versioned optwatch message")
    return request


# --- JSON lines -------------------------------------------------------------------------------
# JSON has no NaN or Infinity. Like protobuf's JSON mapping, non-finite floats are written as the
# strings "NaN", "Infinity" and "-Infinity" and read back as floats, so a blown-up loss survives
# the round trip and the file stays parseable by jq and every other JSON reader.

_NONFINITE_TO_TEXT = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_TEXT_TO_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _to_json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else _NONFINITE_TO_TEXT[repr(value)]
    if isinstance(value, dict):
        return {k: _to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, array.array)):
        return [_to_json_safe(v) for v in value]
    return value


def _from_json_safe(value: Any) -> Any:
    if isinstance(value, str):
        return _TEXT_TO_NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _from_json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json_safe(v) for v in value]
    return value


def record_to_json_line(record: dict[str, Any]) -> str:
    return json.dumps(_to_json_safe(record), separators=(",", ":"), allow_nan=False) + "\n"


def record_from_json_line(line: str) -> dict[str, Any]:
    record = _from_json_safe(json.loads(line))
    if not isinstance(record, dict):
        raise ProtocolError("a record line must hold a JSON object")
    check_record(record)
    return record


def read_record_file(lines: Iterable[str], source: str = "record") -> Iterator[dict[str, Any]]:
    """Records of a JSONL file; a bad line raises with its line number so the user can find it."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield record_from_json_line(line)
        except (ValueError, ProtocolError) as exc:
            raise ProtocolError(f"{source}:{number}: {exc}") from exc


def make_record(kind: str, rank: int, **fields: Any) -> dict[str, Any]:
    import time

    return {"v": PROTOCOL_VERSION, "kind": kind, "rank": rank, "time": time.time(), **fields}
