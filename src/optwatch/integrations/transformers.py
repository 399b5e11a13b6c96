"""``OptwatchCallback`` for the Hugging Face ``Trainer``: ``Trainer(..., callbacks=[OptwatchCallback()])``.

The probe watches the optimizer the Trainer built (the one accelerate wraps), so optwatch's steps are the
Trainer's optimizer steps (the ``step`` it logs minus one, in a resumed run too) and the step's loss is the
sum of the micro-batch losses the Trainer logs as ``loss``. What the Trainer logs besides the step's own
figures (evaluation metrics, ``epoch``, anything a ``compute_metrics`` returns) is published as ``metric``
records, tagged with the last step done (the one the Trainer logs them at, minus one).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from optwatch.integrations import numbers_of

# Already in every step record (measured by optwatch, checked against the Trainer's own figures), or a
# position in the data rather than a measure (epoch).
_IN_THE_STEP_RECORD = frozenset({"loss", "grad_norm", "learning_rate", "epoch"})


class OptwatchCallback(TrainerCallback):
    def __init__(self) -> None:
        self.probe: Any = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        import optwatch

        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
        samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        # Resumed from a checkpoint, the Trainer goes on from its global step, and so do optwatch's steps.
        self.probe = optwatch.watch(model, inner, batch_size=samples_per_step, start_step=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.probe is None:
            return
        numbers = numbers_of(logs or {}, skip=_IN_THE_STEP_RECORD)
        if numbers:
            self.probe.log_after_step(**numbers)  # (the Trainer's step N is optwatch's N-1: the last one done)
