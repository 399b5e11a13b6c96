"""PyTorch Lightning (the ``lightning`` package) training a small MLP on synthetic data, on the CPU: the
ground truth that ``optwatch run`` is checked against for a Lightning run. No optwatch import, unless
``--callback`` adds ``optwatch.integrations.lightning.OptwatchCallback`` (for a run started with plain ``python``).

A validation loop between training steps (val_check_interval=8 batches) after the default sanity check
(num_sanity_val_steps=2: two validation batches before the first training step), gradient_clip_val=0.5
(Lightning clips by norm with torch.nn.utils.clip_grad_norm_), two epochs, no logger, checkpointing,
progress bar or model summary.

Lightning runs ``training_step`` and ``backward()`` inside ``optimizer.step(closure)``, then calls
``on_before_optimizer_step`` (before clipping), then clips, then the optimizer updates the weights. Per
optimizer step, from that hook:

    FRAMEWORK_STEP {"step": S, "loss": ..., "grad_norm": ..., "samples": N, "lr": ...}

- ``step`` is ``trainer.global_step`` during the step: from 0, as optwatch counts.
- ``loss`` is the mean of the losses ``training_step`` returned for the step's batches (under ``--accumulate N``
  N of them, the last run in the closure; the one backward() ran on without it).
- ``grad_norm`` is the global L2 norm of the gradients before clipping (``torch.nn.utils.get_total_norm``).
- ``samples`` is the number of training samples ``training_step`` received for the step.

``FRAMEWORK_EVAL {"after_step": S, "sanity": bool, "val_loss": ..., "val_samples": N}`` after each
validation run (``after_step`` -1: the sanity check, before step 0).

``--schedule --logs DIR``: a per-batch LambdaLR (the rate rises 10% of its base a step) and Lightning's
LearningRateMonitor, writing what it logs to ``DIR/metrics.csv`` (``--logs`` alone: Lightning's CSVLogger
there, ``val_loss`` with the step it tags it with; ``--log-train``: ``train_loss`` logged on step and epoch
too). ``--accumulate N``: accumulate_grad_batches=N, so that
validations (every 8 batches) fall in the middle of a step.
"""

import inspect
import json
import logging
import sys
import warnings

warnings.filterwarnings("ignore")

import lightning  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.plugins.precision import Precision  # noqa: E402
from torch import nn  # noqa: E402

TRAIN_SAMPLES = 192
VAL_SAMPLES = 64
BATCH = 16  # 12 optimizer steps an epoch
VAL_BATCH = 32
MAX_STEPS = 24
VAL_EVERY = 8  # training batches between validations
CLIP = 0.5


def emit(kind: str, payload: dict) -> None:
    print(f"{kind} {json.dumps(payload)}", flush=True)


def clipping_path() -> list[str]:
    """Where the installed Lightning clips by norm, read from its source: ``file:line call``."""
    method = Precision.clip_grad_by_norm
    lines, first = inspect.getsourcelines(method)
    source = (inspect.getsourcefile(method) or "?").split("site-packages/")[-1]
    return [
        f"{source}:{first + offset} {method.__qualname__} -> {line.strip()}"
        for offset, line in enumerate(lines)
        if "torch.nn.utils." in line
    ]


def synthetic(count: int, seed: int) -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(count, 16, generator=generator)
    weights = torch.randn(16, 1, generator=torch.Generator().manual_seed(99))
    targets = torch.tanh(inputs @ weights / 4) * 2 + 0.05 * torch.randn(count, 1, generator=generator)
    return torch.utils.data.TensorDataset(inputs, targets)


class MLP(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
        self._losses: list[float] = []
        self._samples = 0
        self._val_losses: list[torch.Tensor] = []
        self._val_samples = 0

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        loss = nn.functional.mse_loss(self.net(inputs), targets)
        self._losses.append(loss.item())
        if "--log-train" in sys.argv:  # (Lightning's loggers: train_loss_step each step, train_loss_epoch each epoch)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
        self._samples += int(inputs.size(0))
        return loss

    def on_before_optimizer_step(self, optimizer):
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        emit(
            "FRAMEWORK_STEP",
            {
                "step": self.trainer.global_step,
                "loss": sum(self._losses) / len(self._losses),
                "grad_norm": float(torch.nn.utils.get_total_norm(grads)),
                "samples": self._samples,
                "lr": optimizer.param_groups[0]["lr"],
            },
        )
        self._samples = 0
        self._losses = []

    def validation_step(self, batch, batch_idx):
        inputs, targets = batch
        loss = nn.functional.mse_loss(self.net(inputs), targets, reduction="sum")
        self._val_losses.append(loss)
        self._val_samples += int(inputs.size(0))

    def on_validation_epoch_end(self):
        sanity = self.trainer.sanity_checking
        emit(
            "FRAMEWORK_EVAL",
            {
                "after_step": self.trainer.global_step - 1,
                "sanity": sanity,
                "val_loss": float(torch.stack(self._val_losses).sum()) / self._val_samples,
                "val_samples": self._val_samples,
            },
        )
        self.log("val_loss", torch.stack(self._val_losses).sum() / self._val_samples)
        self._val_losses, self._val_samples = [], 0

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        if "--schedule" not in sys.argv:
            return optimizer
        # A rate that rises 10% a step, stepped per batch, as warm-ups are.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 + 0.1 * step)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def main() -> None:
    # One thread: at this size, on a busy two-core machine, a second OpenMP thread only waits.
    torch.set_num_threads(1)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    pl.seed_everything(0, verbose=False)
    train = torch.utils.data.DataLoader(synthetic(TRAIN_SAMPLES, 1), batch_size=BATCH, shuffle=True)
    val = torch.utils.data.DataLoader(synthetic(VAL_SAMPLES, 2), batch_size=VAL_BATCH)
    callbacks: list = []
    logger = False
    if "--schedule" in sys.argv:  # and Lightning's own log of the rate, to --logs DIR
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if "--logs" in sys.argv:
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(sys.argv[sys.argv.index("--logs") + 1], name="", version="")
    accumulate = int(sys.argv[sys.argv.index("--accumulate") + 1]) if "--accumulate" in sys.argv else 1
    if "--callback" in sys.argv:
        from optwatch.integrations.lightning import OptwatchCallback

        callbacks.append(OptwatchCallback())
    trainer = pl.Trainer(
        callbacks=callbacks,
        accelerator="cpu",
        devices=1,
        max_steps=MAX_STEPS,
        val_check_interval=VAL_EVERY,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=CLIP,
        enable_checkpointing=False,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision="bf16-mixed" if "--bf16" in sys.argv else "32-true",
    )
    emit(
        "FRAMEWORK_INFO",
        {
            "framework": "lightning.pytorch.Trainer",
            "precision": trainer.precision,
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "batch_size": BATCH,
            "samples_per_step": BATCH,
            "steps_per_epoch": TRAIN_SAMPLES // BATCH,
            "max_steps": MAX_STEPS,
            "val_every": VAL_EVERY,
            "val_batches": VAL_SAMPLES // VAL_BATCH,
            "num_sanity_val_steps": trainer.num_sanity_val_steps,
            "gradient_clip_val": CLIP,
            "clipping": clipping_path(),
        },
    )
    trainer.fit(MLP(), train, val)


if __name__ == "__main__":
    main()
