"""Output lines of the lengths a training prints, for the run's record to keep: a Trainer's ``log_history``
on one line (tens of KiB of JSON), a line past any bound, in 2-byte characters (its cut must split none), a
progress bar redrawn with ``\\r`` for a second before its line ends, and a last line with no newline. Trains
nothing."""

import json
import sys
import time

history = [{"loss": 1.0 / (step + 1), "grad_norm": 0.5, "learning_rate": 5e-05, "epoch": step / 40, "step": step}
           for step in range(1, 160)]  # fmt: skip
print(json.dumps(history), flush=True)
print("x" + "é" * 50_000, flush=True)  # 100,001 bytes: byte 65,536 falls inside an é
for done in range(1, 301):
    sys.stdout.write(f"\rprogress {done}/300")
sys.stdout.flush()
time.sleep(1.0)
print("\nafter the bar", flush=True)
sys.stdout.write("last words")
