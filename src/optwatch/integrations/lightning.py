"""``OptwatchCallback`` for PyTorch Lightning: ``Trainer(..., callbacks=[OptwatchCallback()])``.

The probe watches the first optimizer of ``configure_optimizers`` (the one Lightning's
``LightningOptimizer`` wraps); under automatic optimization a step's loss is its closure's first
evaluation, what ``training_step`` returned (with ``accumulate_grad_batches``, the micro-batches' mean). What
the module logs with ``self.log`` (validation loss, accuracy...) is published as ``metric`` records after
each validation and each training epoch, what that loop logged, tagged with the step Lightning's loggers
tag them with: each value once, when Lightning has a new one (told by the object, never by reading the
device).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

from optwatch.integrations import numbers_of


class OptwatchCallback(Callback):
    def __init__(self) -> None:
        self.probe: Any = None
        self._numbered = False
        """The run's first step is numbered (``start_at``) at its first batch."""
        self._published: dict[str, Any] = {}
        """name -> the value last published (kept, so that its identity means something): callback_metrics
        keeps a value until it is logged again."""

    def on_train_start(self, trainer, pl_module):
        import optwatch

        optimizers = getattr(trainer, "optimizers", None) or [None]
        inner = getattr(optimizers[0], "optimizer", optimizers[0])
        loader = getattr(trainer, "train_dataloader", None)
        batch_size = getattr(loader, "batch_size", None)
        if isinstance(batch_size, int):
            batch_size *= getattr(trainer, "accumulate_grad_batches", 1)  # a step's samples, as the Trainer's
        self.probe = optwatch.watch(pl_module, inner, batch_size=batch_size if isinstance(batch_size, int) else None)
        self._numbered = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.probe is not None and not self._numbered:
            # Here, not at on_train_start: a resumed loop settles its count of batches when it starts.
            self._numbered = True
            self.probe.start_at(_logged_step(trainer))

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            # Lightning's loggers tag it with the batches that stepped so far: the step just done, or, in the
            # middle of an accumulated step, the one under way.
            self._publish(trainer, _logged_step(trainer))

    def on_train_epoch_end(self, trainer, pl_module):
        self._publish(trainer, _logged_step(trainer) - 1)  # (Lightning logs an epoch's at its last step)

    def _publish(self, trainer: Any, step: int) -> None:
        if self.probe is None:
            return
        logged_now = _logged_by_the_ending_loop(trainer)
        fresh = {
            name: value
            for name, value in trainer.callback_metrics.items()
            if self._published.get(name) is not value and (logged_now is None or name in logged_now)
        }
        self._published.update(fresh)
        numbers = numbers_of(fresh)
        if numbers:
            self.probe.log_at_step(max(step, self.probe.first_step), **numbers)


def _logged_by_the_ending_loop(trainer: Any) -> set[str] | None:
    """The names the loop now ending (a validation's, a training epoch's) logged: callback_metrics also holds
    the earlier ones, and hands out a new tensor for an unchanged value (the epoch's train_loss_epoch came
    again at the next validation, at its step). None where Lightning does not say (all are taken)."""
    try:
        return set(trainer._results.metrics(False)["callback"])  # (what callback_metrics itself reads)
    except Exception:  # (another Lightning's internals: every name, told apart by object as before)
        return None


def _logged_step(trainer: Any) -> int:
    """The step Lightning's loggers are at (resumed from a checkpoint, it goes on from there): batches that
    stepped, its ``global_step`` with one optimizer; ``global_step`` counts every optimizer's steps (two a
    batch in a GAN's manual optimization)."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    stepped = getattr(loop, "_batches_that_stepped", None)
    return stepped if isinstance(stepped, int) else trainer.global_step
