"""Not a training script: compares an ``optwatch run --record`` file with the ground truth a script printed.

    python tests/scripts/compare_truth.py RECORD.jsonl STDOUT.txt [--rel 1e-4] [--field loss=loss_d]

The ground truth is the script's ``FRAMEWORK_STEP {json}`` or ``TRUTH {json}`` lines, each with ``step``
counted as optwatch counts (its first optimizer step is step 0) and any of ``loss``, ``grad_norm``,
``samples``, ``lr``, each held against the record's field of the same name; ``--field RECORD=TRUTH``
holds the record's field against another truth key instead (a GAN's ``loss`` against ``loss_d``), and
``--field grad_norm_preclip=grad_norm`` adds a record field to compare. Prints one row per step and field
that disagrees (or is missing on either side), then a count; exits 1 when any does.
"""

import argparse
import json
import math
import sys

FIELDS = ("loss", "grad_norm", "samples", "lr")
MARKERS = ("FRAMEWORK_STEP ", "TRUTH ")


def read_truth(path: str) -> dict[int, dict]:
    truth: dict[int, dict] = {}
    with open(path) as lines:
        for line in lines:
            for marker in MARKERS:
                at = line.find(marker)
                if at != -1:
                    payload = json.loads(line[at + len(marker) :])
                    if "step" in payload:
                        truth[int(payload["step"])] = payload
                    break
    return truth


def read_records(path: str, rank: int = 0) -> dict[int, dict]:
    records: dict[int, dict] = {}
    with open(path) as lines:
        for line in lines:
            record = json.loads(line)
            if record.get("kind") == "step" and record.get("rank", 0) == rank:
                records[int(record["step"])] = record
    return records


def differs(expected, actual, rel: float) -> bool:
    if expected is None or actual is None:
        return expected is not actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        if math.isnan(expected) or math.isnan(actual):
            return not (math.isnan(expected) and math.isnan(actual))
        return abs(expected - actual) > rel * max(abs(expected), abs(actual), 1e-12)
    return expected != actual


def compare(truth: dict[int, dict], records: dict[int, dict], rel: float, pairs: dict[str, str]) -> list[tuple]:
    """``pairs``: record field -> truth key."""
    rows = []
    for step in sorted(set(truth) | set(records)):
        expected, record = truth.get(step), records.get(step)
        if expected is None:
            rows.append((step, "(step)", "no truth line", "recorded"))
            continue
        if record is None:
            rows.append((step, "(step)", "a truth line", "no step record"))
            continue
        for field, key in pairs.items():
            if key not in expected:
                continue
            actual = record.get(field)
            if differs(expected[key], actual, rel):
                rows.append((step, field if key == field else f"{field}/{key}", expected[key], actual))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record")
    parser.add_argument("stdout")
    parser.add_argument("--rel", type=float, default=1e-4, help="relative tolerance")
    parser.add_argument("--field", action="append", default=[], metavar="RECORD=TRUTH")
    args = parser.parse_args()
    pairs = {field: field for field in FIELDS}
    for pair in args.field:
        field, _, key = pair.partition("=")
        pairs[field] = key or field
    truth, records = read_truth(args.stdout), read_records(args.record)
    rows = compare(truth, records, args.rel, pairs)
    print(f"{'step':>5}  {'field':<16} {'truth':>22} {'optwatch':>22}  ratio")
    for step, field, expected, actual in rows:
        ratio = ""
        if isinstance(expected, (int, float)) and isinstance(actual, (int, float)) and expected:
            ratio = f"{actual / expected:.4g}"
        print(f"{step:>5}  {field:<16} {expected!s:>22} {actual!s:>22}  {ratio}")
    print(f"{len(truth)} truth steps, {len(records)} step records, {len(rows)} disagreements")
    return 1 if rows else 0


if __name__ == "__main__":
    sys.exit(main())
