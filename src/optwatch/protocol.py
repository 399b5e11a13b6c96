"""Messages between a training job and its viewers: versioned dicts, msgpack on the wire, JSON lines on disk.

No torch and no textual here: both sides import this module.

Every record is a flat-ish dict with at least ``v`` (protocol version), ``kind``, ``rank``, ``seq``
(per-rank, increasing across all kinds, so viewers can spot gaps) and ``time`` (unix seconds).
A wire message is a msgpack list of records. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
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

# Largest wire message a viewer accepts; anything bigger is a bug or an attack, not telemetry.
MAX_WIRE_BYTES = 16 * 1024 * 1024


class ProtocolError(ValueError):
    """A message that does not follow the protocol."""


def encode_batch(records: list[dict[str, Any]]) -> bytes:
    return msgpack.packb(records, use_bin_type=True)


def decode_batch(payload: bytes) -> list[dict[str, Any]]:
    if len(payload) > MAX_WIRE_BYTES:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the {MAX_WIRE_BYTES} byte limit")
    try:
        records = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_bin_len=MAX_WIRE_BYTES)
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
    return msgpack.packb({"v": PROTOCOL_VERSION, **request}, use_bin_type=True)


def decode_request(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_WIRE_BYTES:
        raise ProtocolError("request too large")
    try:
        request = msgpack.unpackb(payload, raw=False, strict_map_key=True)
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
    if isinstance(value, (list, tuple)):
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
