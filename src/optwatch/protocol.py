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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

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
HISTORY = "history"  # a rank's whole run, downsampled (optwatch.runhistory): sent to a viewer that attaches
WAITING = "waiting"  # no step boundary for a while: where the training thread is (probe.waiting)

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
INTERRUPTED = 130
"""An ``end`` record's ``exit_code`` after a KeyboardInterrupt (Ctrl-C, or a ``stop`` command), as the
interpreter ends on one."""
STOPPED_BY_REQUEST = "optwatch: stopped by request"
"""How the KeyboardInterrupt of a ``stop`` command begins (the launcher tells it from a Ctrl-C by it)."""


class ProtocolError(ValueError):
    """A message that does not follow the protocol."""


def finite(value: Any) -> bool:
    """A number a figure can be computed from: not None, NaN, Inf, a bool or a string."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def error_line(exc: BaseException) -> str:
    """An end record's ``error``: the exception as a traceback's last line says it (``RuntimeError: the batch
    was bad``)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def run_status(exit_codes: list[int | None], stopped: bool = False, ended_all: bool = True) -> tuple[str, int | None]:
    """A run's status and exit code from its ranks' end records' exit codes: "failed (exit N)" where one
    failed, "stopped" for a Ctrl-C or a ``stop`` (``stopped``: one was accepted), "finished" where every rank
    (``ended_all``) said it exited 0; else "ended", how unknown (a plain python run's ``sys.exit(N)``, whose
    N its process cannot know; ranks killed without a word; the hub stopped)."""
    interrupted = INTERRUPTED in exit_codes
    failed = [code for code in exit_codes if isinstance(code, int) and code not in (0, INTERRUPTED)]
    if failed:
        return f"failed (exit {failed[0]})", failed[0]
    if stopped or interrupted:
        return "stopped", INTERRUPTED if interrupted else 0
    if ended_all and all(code == 0 for code in exit_codes):
        return "finished", 0
    return "ended", None


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


def decode_records(payload: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of a batch that follow the protocol, and why each of the others was left out (a batch
    that is no list of records at all raises ProtocolError)."""
    if len(payload) > MAX_WIRE_BYTES:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the {MAX_WIRE_BYTES} byte limit")
    try:
        records = _unpackb(payload)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable message: {exc}") from exc
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ProtocolError("a message must be a list of records")
    good, refused = [], []
    for record in records:
        try:
            validate_record(record)
        except ProtocolError as exc:
            refused.append(str(exc))
        else:
            good.append(record)
    return good, refused


def decode_batch(payload: bytes) -> list[dict[str, Any]]:
    """The records of a batch, every one of which must follow the protocol."""
    records, refused = decode_records(payload)
    if refused:
        raise ProtocolError(refused[0])
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


def _array_as_list(value: Any) -> Any:
    if isinstance(value, array.array):  # a packed column of a record the wire decoded
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def record_to_json_line(record: dict[str, Any]) -> str:
    try:
        # Most records hold finite floats only: the C encoder alone, without a walk in Python over every value
        # (the hub and a recording viewer write each record, so this runs at every step).
        return json.dumps(record, separators=(",", ":"), allow_nan=False, default=_array_as_list) + "\n"
    except ValueError:  # a non-finite float
        return json.dumps(_to_json_safe(record), separators=(",", ":"), allow_nan=False) + "\n"


def record_from_json_line(line: str | bytes) -> dict[str, Any]:
    """The record on one line of a record file, validated (``validate_record``); ProtocolError if it is not one."""
    try:
        if isinstance(line, bytes):
            line = line.decode("utf-8")
        parsed = json.loads(line)
        if not isinstance(parsed, dict):
            raise ProtocolError("a record line must hold a JSON object")
        kind = parsed.get("kind")
        record = (_FIELDS.get(kind, _ENVELOPE) if isinstance(kind, str) else _ENVELOPE).from_json(parsed)
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise ProtocolError("nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON at column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # ours, and integers too long to read
        raise ProtocolError(str(exc) if isinstance(exc, ProtocolError) else f"not JSON: {exc}") from None
    validate_record(record)
    return record


# The longest line a record file may have: a `layers` record of a very large model, as JSON text.
MAX_LINE_BYTES = 4 * MAX_WIRE_BYTES


HEADER_LINES = 10
"""A file none of whose first this many lines is a record is not a record file at all: refused whole."""


@dataclass
class RecordDamage:
    """What a lenient read of a record file (``read_record_lines(..., damage=...)``) kept and what it left out:
    a record damaged in part still replays the rest, and this says how much is missing."""

    source: str
    kept: int = 0
    skipped: int = 0
    first_skipped: str | None = None
    """``line 501: not JSON ...``: the first line that is not a record, and why."""
    first_skipped_line: int = 0
    skipped_to_the_end: bool = False
    """No record after the first bad line: the file is damaged from there on, not here and there."""
    last_step: int | None = None
    cut_mid_line: bool = False
    """The last line stops without its newline (the writer was stopped mid-line)."""
    unfinished: bool = False
    """A gzip file whose stream stops before its end (written by a process that did not close it)."""
    broken: str | None = None
    """Where and why compressed data could not be read on (``its gzip data is damaged at byte N (...)``)."""

    def damaged(self, finished: bool = True) -> bool:
        """Anything to say; an unfinished stream counts only where the writer is done (``finished``)."""
        return bool(self.skipped or self.cut_mid_line or self.broken or (self.unfinished and finished))

    def warning(self, finished: bool = True, steps_expected: int | None = None) -> str | None:
        """One line for the user, or None where nothing is missing."""
        if not self.damaged(finished):
            return None
        at = ""
        if self.last_step is not None:
            at = f"step {self.last_step}"
            if steps_expected is not None and self.last_step + 1 < steps_expected:
                at += f" of the run's {steps_expected}"
        upto = f" (up to {at})" if at else ""
        if self.skipped and self.skipped_to_the_end:
            why = f"{self.first_skipped}; {self.broken}" if self.broken else self.first_skipped
            return (
                f"{self.source} is damaged from line {self.first_skipped_line} on ({why}): replaying the "
                f"{_count(self.kept, 'record')} before it{upto}; {_count(self.skipped, 'line')} after it skipped"
            )
        parts = []
        if self.skipped:
            are = "is not a record" if self.skipped == 1 else "are not records"
            parts.append(f"skipped {_count(self.skipped, 'line')} that {are} (first: {self.first_skipped})")
        if self.broken:
            parts.append(f"{self.broken}, nothing after it read")
        elif self.cut_mid_line or (self.unfinished and finished):
            parts.append("it ends early, cut" + (f" at {at}" if at else ""))
            upto = ""
        return f"{self.source}: {'; '.join(parts)}: replaying the {_count(self.kept, 'record')}{upto}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def read_record_file(
    handle: BinaryIO, source: str = "record", damage: RecordDamage | None = None
) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file opened in binary (see ``read_record_lines``)."""
    return read_record_lines(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), source, damage)


def read_record_lines(
    lines: Iterable[bytes], source: str = "record", damage: RecordDamage | None = None
) -> Iterator[dict[str, Any]]:
    """Records of JSON lines (a line longer than ``MAX_LINE_BYTES`` is refused, whatever its source gave).

    Without ``damage`` the first bad line raises ProtocolError with its number. With it, bad lines are skipped
    and counted there; the file is refused (ProtocolError naming its first bad line) only when none of its
    first ``HEADER_LINES`` lines is a record, or when it holds none: then it is not a record file at all."""
    refused: list[tuple[int, str]] = []  # bad lines before the first record
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            if len(line) > MAX_LINE_BYTES:
                raise ProtocolError(f"a line longer than {MAX_LINE_BYTES} bytes")
            record = record_from_json_line(line)
        except ProtocolError as exc:
            if damage is None:
                raise ProtocolError(f"{source}:{number}: {exc}") from None
            if len(line) > MAX_LINE_BYTES:  # where the next line starts is anyone's guess: read no further
                damage.broken = f"line {number} is longer than {MAX_LINE_BYTES} bytes"
                break
            if not line.endswith(b"\n"):
                damage.cut_mid_line = True  # the end of the file, where its writer stopped
                break
            if not damage.kept:
                refused.append((number, str(exc)))
                if len(refused) >= HEADER_LINES:
                    break
                continue
            if not damage.skipped:
                damage.first_skipped, damage.first_skipped_line = f"line {number}: {exc}", number
            damage.skipped += 1
            damage.skipped_to_the_end = True
            continue
        if damage is not None:
            if refused and not damage.kept:  # not a header's worth of garbage: skipped like any other bad line
                damage.first_skipped, damage.first_skipped_line = (
                    f"line {refused[0][0]}: {refused[0][1]}",
                    refused[0][0],
                )
                damage.skipped += len(refused)
            damage.kept += 1
            damage.skipped_to_the_end = False
            step = record.get("step")
            if record["kind"] == STEP and _is_int(step):
                damage.last_step = step  # the last one read, as a replay ends on it
        yield record
    if damage is not None and not damage.kept:
        if refused:
            number, reason = refused[0]
            raise ProtocolError(f"{source}:{number}: {reason}")
        raise ProtocolError(f"{source}: holds no records")


def make_record(kind: str, rank: int, **fields: Any) -> dict[str, Any]:
    import time

    return {"v": PROTOCOL_VERSION, "kind": kind, "rank": rank, "time": time.time(), **fields}


def first_step(hello: dict[str, Any]) -> int:
    """The number of its first step that a rank's ``hello`` says: not 0 in a run resumed from a checkpoint
    (and 0 from records made before hellos said it)."""
    first = hello.get("first_step")
    return first if _is_int(first) else 0


# --- what viewers read ----------------------------------------------------------------------------
# Viewers format, compare and add up what records hold: a string where a number belongs, or an object
# where a list does, would raise inside the dashboard. So every record that comes in, from the wire or
# from a file, is checked against this table first: per kind, each field a viewer reads and what it may
# hold. A field may be left out (viewers have defaults) unless it is required; fields not listed are not
# read, and pass as they are.

# Integers as msgpack and the packed columns carry them; a larger one would overflow float formatting.
_INT_RANGE = 1 << 63


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -_INT_RANGE <= value < _INT_RANGE


def _is_number(value: Any) -> bool:
    return isinstance(value, float) or _is_int(value)


def _kind_of(value: Any) -> str:
    """What ``value`` is, in the words of JSON (the messages name what a field holds)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "an integer" if _is_int(value) else "an integer out of range"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple, array.array)):
        return "a list"
    return type(value).__name__


def _plainly(plain: frozenset[type], values: list[Any] | tuple[Any, ...]) -> bool:
    """Whether all ``values`` are of the ``plain`` types, the quick way (a layer column holds hundreds)."""
    kinds = set(map(type, values))
    if not kinds <= plain:
        return False
    return int not in kinds or all(-_INT_RANGE <= value < _INT_RANGE for value in values if type(value) is int)


# A fault: where inside the value (".name", "[3]"; "" for the value itself), what it must be, what it is.
_Fault = tuple[str, str, Any]


class _Spec:
    """What a field may hold; this base accepts anything."""

    what = "anything"
    plain: frozenset[type] = frozenset()
    """Types every value of which fits (an int also within range): checked first, since they are most values."""

    def fault(self, value: Any) -> _Fault | None:
        return None

    def from_json(self, value: Any) -> Any:
        """``value`` as a record file holds it, with numbers written as "NaN", "Infinity"... made numbers again,
        and only where a number belongs: a log line that reads "NaN" stays text."""
        return _from_json_safe(value)


class _Scalar(_Spec):
    def __init__(self, what: str, test: Callable[[Any], bool], numeric: bool = False, plain: tuple[type, ...] = ()):
        self.what, self._test, self._numeric, self.plain = what, test, numeric, frozenset(plain)

    def fault(self, value: Any) -> _Fault | None:
        return None if self._test(value) else ("", self.what, value)

    def from_json(self, value: Any) -> Any:
        return _TEXT_TO_NONFINITE.get(value, value) if self._numeric and isinstance(value, str) else value


class _Optional(_Spec):
    def __init__(self, spec: _Spec):
        self._spec, self.what = spec, f"{spec.what} or null"
        self.plain = spec.plain | {type(None)} if spec.plain else frozenset()

    def fault(self, value: Any) -> _Fault | None:
        if value is None:
            return None
        fault = self._spec.fault(value)
        return ("", self.what, value) if fault is not None and not fault[0] else fault

    def from_json(self, value: Any) -> Any:
        return None if value is None else self._spec.from_json(value)


class _List(_Spec):
    def __init__(self, item: _Spec):
        self._item, self.what = item, "a list"
        # Packed columns from the wire (see above) hold numbers by construction.
        self._packed = {code for code, sample in (("d", 0.0), ("q", 0)) if item.fault(sample) is None}

    def fault(self, value: Any) -> _Fault | None:
        if isinstance(value, array.array) and value.typecode in self._packed:
            return None
        if not isinstance(value, (list, tuple)):
            return ("", self.what, value)
        if _plainly(self._item.plain, value):
            return None
        for index, item in enumerate(value):
            fault = self._item.fault(item)
            if fault is not None:
                return (f"[{index}]{fault[0]}", fault[1], fault[2])
        return None

    def from_json(self, value: Any) -> Any:
        return [self._item.from_json(item) for item in value] if isinstance(value, list) else value


class _Map(_Spec):
    """An object whose keys are names (of metrics, of layers...)."""

    def __init__(self, value: _Spec):
        self._value, self.what = value, "an object"

    def fault(self, value: Any) -> _Fault | None:
        if not isinstance(value, dict):
            return ("", self.what, value)
        for key, item in value.items():
            if not isinstance(key, str):
                return (f"[{key!r}]", "named by a string", key)
            fault = self._value.fault(item)
            if fault is not None:
                return (f"[{key!r}]{fault[0]}", fault[1], fault[2])
        return None

    def from_json(self, value: Any) -> Any:
        return {k: self._value.from_json(v) for k, v in value.items()} if isinstance(value, dict) else value


class _Object(_Spec):
    """An object with named fields, each optional unless ``required``; other fields pass unread."""

    def __init__(self, fields: dict[str, _Spec], required: tuple[str, ...] = ()):
        self.fields, self._required, self.what = fields, required, "an object"

    def fault(self, value: Any) -> _Fault | None:
        if not isinstance(value, dict):
            return ("", self.what, value)
        for name in self._required:
            if name not in value:
                return (f".{name}", "there", _MISSING)
        for name, spec in self.fields.items():
            if name in value:
                item = value[name]
                if type(item) in spec.plain and (type(item) is not int or -_INT_RANGE <= item < _INT_RANGE):
                    continue
                fault = spec.fault(item)
                if fault is not None:
                    return (f".{name}{fault[0]}", fault[1], fault[2])
        return None

    def from_json(self, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {k: (self.fields[k].from_json(v) if k in self.fields else _from_json_safe(v)) for k, v in value.items()}


_MISSING = object()  # what a fault names for a required field that is not there

_ANY = _Spec()
_INT = _Scalar("an integer", _is_int, numeric=True, plain=(int,))
_NUMBER = _Scalar("a number", _is_number, numeric=True, plain=(int, float))
_TEXT = _Scalar("a string", lambda value: isinstance(value, str), plain=(str,))
_FLAG = _Scalar("true or false", lambda value: isinstance(value, bool), plain=(bool,))
# A number or null: most figures are null when they were not measured.
_FIGURE = _Optional(_NUMBER)
_TEXT_OR_NULL = _Optional(_TEXT)


def _figures(names: str) -> dict[str, _Spec]:
    """Fields that each hold a number or null."""
    return dict.fromkeys(names.split(), _FIGURE)


def _choice(*values: str) -> _Spec:
    return _Scalar(" or ".join(repr(v) for v in values), lambda value: value in values)


_TEXTS = _List(_TEXT)

_ENVELOPE_FIELDS: dict[str, _Spec] = {"rank": _INT, "seq": _INT, "origin": _INT}

_GPU = _Object(
    {
        "index": _INT,
        "name": _TEXT_OR_NULL,
        "current": _Optional(_FLAG),
        "throttle": _Optional(_TEXTS),
        **_figures(
            "util_percent mem_used_bytes mem_total_bytes process_mem_bytes temperature_c power_w power_limit_w "
            "sm_clock_mhz"
        ),
    }
)
_WORKER = _Object({"pid": _INT, "cpu_percent": _FIGURE, "rss_bytes": _FIGURE}, required=("pid",))
_OP = _Object(
    {
        "name": _TEXT_OR_NULL,
        "module": _TEXT_OR_NULL,
        "flags": _Optional(_TEXTS),
        "calls": _INT,
        "pct": _NUMBER,
        "self_cpu_s": _FIGURE,
        "self_device_s": _FIGURE,
        # Per call signature, the input shapes: each a list of dimensions (empty or null for a non-tensor).
        "shapes": _Optional(_List(_List(_Optional(_List(_ANY))))),
    }
)
_CULPRIT = _Object({"flag": _TEXT, "calls": _INT, "s": _FIGURE, "pct_of_wall": _FIGURE})
# The verdict's evidence holds many figures; these are the ones formatted as numbers when present.
_EVIDENCE = _Object(
    {"gpu_util_percent": _NUMBER, "launch_ratio": _NUMBER, "cpu_percent": _NUMBER, "workers_cpu_percent": _FIGURE}
)

_SERIES = _Object(
    {
        "width": _INT,
        "count": _List(_INT),
        "sum": _List(_FIGURE),
        "min": _List(_FIGURE),
        "max": _List(_FIGURE),
        "last": _List(_FIGURE),
        "bad": _List(_INT),
        "last_step": _List(_INT),
    },
    required=("width", "count", "sum", "min", "max", "last", "bad", "last_step"),
)

_FRAME = _Object(
    {"file": _TEXT, "line": _Optional(_INT), "function": _TEXT, "own": _Optional(_FLAG)}, required=("file", "function")
)

_KIND_FIELDS: dict[str, dict[str, _Spec]] = {
    WAITING: {
        "step": _INT,
        "waited_s": _NUMBER,
        "first": _Optional(_FLAG),
        "typical_step_s": _FIGURE,
        "stack": _List(_FRAME),
        "where": _Optional(_FRAME),
        "importing": _TEXT_OR_NULL,
    },
    HISTORY: {"last_step": _INT, "series": _Map(_SERIES)},
    HELLO: {
        "run_id": _TEXT_OR_NULL,
        "script": _TEXT_OR_NULL,
        "pid": _Optional(_INT),
        "world_size": _INT,
        "device": _TEXT_OR_NULL,
        "device_name": _TEXT_OR_NULL,
        "first_step": _Optional(_INT),
    },
    STEP: {
        "step": _INT,
        "detail_every": _Optional(_INT),
        "amp": _Optional(_FLAG),
        "cudnn_benchmark": _Optional(_FLAG),
        "precision": _TEXT_OR_NULL,
        "samples": _Optional(_INT),
        "eval_batches": _Optional(_INT),
        "new_model": _Optional(_FLAG),
        "between_cells": _Optional(_FLAG),
        "losses": _Optional(_Map(_FIGURE)),
        **_figures(
            "loss grad_norm lr step_time_s data_wait_s to_backward_s forward_s backward_s optimizer_s other_s "
            "optwatch_s optwatch_bg_s core_wait_s samples_per_s clip_max_norm eval_wait_s"
        ),
    },
    SYSTEM: {
        "step": _INT,
        "load_avg": _Optional(_List(_NUMBER)),
        "workers": _Optional(_List(_WORKER)),
        "gpu_status": _TEXT_OR_NULL,
        "gpus": _Optional(_List(_GPU)),
        "mem_device": _Optional(_INT),
        "mem_alloc_retries": _Optional(_INT),
        "mem_ooms": _Optional(_INT),
        "held": _Optional(_FLAG),
        **_figures(
            "cpu_percent rss_bytes threads cpu_count host_mem_used_bytes host_mem_total_bytes torch_threads "
            "mem_allocated_bytes mem_reserved_bytes mem_peak_bytes mem_total_bytes mem_fragmentation_bytes "
            "mem_headroom_bytes"
        ),
    },
    "metric": {"step": _INT, "values": _Map(_FIGURE)},
    LOG: {"stream": _TEXT, "line": _TEXT, "from_rank": _Optional(_INT)},
    HUB: _figures("cpu_s rss_bytes"),
    END: {"exit_code": _Optional(_INT)},
    EVENT: {
        "command": _TEXT,
        "status": _TEXT,
        "reason": _TEXT_OR_NULL,
        "effective_step": _Optional(_INT),
        "id": _TEXT_OR_NULL,
        "source": _TEXT_OR_NULL,
    },
    ALERT: {
        "type": _TEXT,
        "step": _Optional(_INT),
        "severity": _TEXT_OR_NULL,
        "message": _TEXT_OR_NULL,
    },
    VERDICT: {
        "bottleneck": _TEXT,
        "message": _TEXT_OR_NULL,
        "window": _List(_INT),
        "final": _Optional(_FLAG),
        "evidence": _Optional(_EVIDENCE),
        "suggestions": _TEXTS,
    },
    HOTSPOTS: {
        "status": _TEXT,
        "steps": _Optional(_List(_INT)),
        "error": _TEXT_OR_NULL,
        "digest": _TEXT_OR_NULL,
        "trace": _TEXT_OR_NULL,
        "trace_error": _TEXT_OR_NULL,
        "wall_s": _FIGURE,
        "device_total_s": _FIGURE,
        "partial": _Optional(_FLAG),
        "sort_by": _Optional(_choice("self_cpu_s", "self_device_s", "calls")),
        "ops": _Optional(_List(_OP)),
        "culprits": _Optional(_List(_CULPRIT)),
    },
    LAYERS: {
        "step": _INT,
        "names": _TEXTS,
        "numel": _List(_NUMBER),
        "grad_norm": _List(_NUMBER),
        # Measured a chunk of the parameters at a time: null where a parameter has not been yet.
        "weight_norm": _List(_FIGURE),
        "zero_frac": _List(_FIGURE),
        "update_norm": _List(_FIGURE),
        "update_ratio": _List(_FIGURE),
        "updated_at": _List(_Optional(_INT)),
        "alerting": _Map(_TEXT),
    },
}
_REQUIRED = {STEP: ("step",), WAITING: ("step", "waited_s")}
_FIELDS: dict[Any, _Object] = {
    kind: _Object({**_ENVELOPE_FIELDS, **fields}, _REQUIRED.get(kind, ())) for kind, fields in _KIND_FIELDS.items()
}
_ENVELOPE = _Object(_ENVELOPE_FIELDS)


def validate_record(record: dict[str, Any]) -> None:
    """Raise ProtocolError, naming the field, unless every field of ``record`` that a viewer reads holds what it
    may (see the table above); a viewer never holds a record of another shape."""
    if not isinstance(record, dict):
        raise ProtocolError(f"a record must be an object, not {_kind_of(record)}")
    check_record(record)
    fault = _FIELDS.get(record["kind"], _ENVELOPE).fault(record)
    if fault is not None:
        where, expected, value = fault
        if value is _MISSING:
            raise ProtocolError(f"{record['kind']} record: field {where[1:]!r} is missing")
        raise ProtocolError(f"{record['kind']} record: field {where[1:]!r} must be {expected}, not {_kind_of(value)}")
