"""A run resumed from a checkpoint, three ways: the Hugging Face Trainer, PyTorch Lightning and a plain loop.

    python resumed.py --framework hf|lightning|plain --dir DIR --phase 1|2 [--callback]

Phase 1 trains steps 0-9 and saves a checkpoint in DIR; phase 2 loads it and trains steps 10-19, as a job
restarted after a preemption does. ``--callback`` adds optwatch's callback (the Trainer's, Lightning's) or,
in the plain loop, ``optwatch.watch(model, optimizer, start_step=...)``. Per optimizer step, what the
framework itself says of it:

    FRAMEWORK_STEP {"step": S, "loss": ..., "lr": ...}

- ``step`` from 0 as optwatch counts: the Trainer's logged ``step`` (its global step after the update)
  minus one, Lightning's ``trainer.global_step`` during the step, the plain loop's own counter.
- ``loss`` the step's loss as the framework logs it; ``lr`` the learning rate the step's update used (in the
  plain loop, read back from the update of a bias: plain SGD in float64).
"""

import argparse
import json
import logging
import os
import warnings

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

STEPS_PER_PHASE = 10


def emit(step: int, loss: float, lr: float) -> None:
    print("FRAMEWORK_STEP " + json.dumps({"step": step, "loss": loss, "lr": lr}), flush=True)


def hugging_face(directory: str, phase: int, callback: bool) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments, set_seed

    class Tokens(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.ids = torch.randint(0, 64, (200, 12), generator=torch.Generator().manual_seed(1))

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            return {"input_ids": self.ids[index], "labels": self.ids[index].clone()}

    class Logged(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and "learning_rate" in logs:
                emit(state.global_step - 1, float(logs["loss"]), float(logs["learning_rate"]))

    set_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=16))
    args = TrainingArguments(
        output_dir=directory,
        use_cpu=True,
        seed=0,
        max_steps=STEPS_PER_PHASE * phase,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        lr_scheduler_type="linear",
        warmup_steps=4,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps",
        save_steps=STEPS_PER_PHASE,
        report_to="none",
        disable_tqdm=True,
        log_level="error",
        dataloader_num_workers=0,
    )
    callbacks = [Logged()]
    if callback:
        from optwatch.integrations.transformers import OptwatchCallback

        callbacks.append(OptwatchCallback())
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=phase == 2)


def lightning(directory: str, phase: int, callback: bool) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Regression(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

        def training_step(self, batch, index):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            emit(self.trainer.global_step, float(loss), self.optimizers().param_groups[0]["lr"])
            return loss

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / 40)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    pl.seed_everything(0, verbose=False)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(320, 8, generator=generator)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True).tanh())
    loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)
    callbacks = [ModelCheckpoint(dirpath=directory, every_n_train_steps=STEPS_PER_PHASE, save_last=True)]
    if callback:
        from optwatch.integrations.lightning import OptwatchCallback

        callbacks.append(OptwatchCallback())
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=STEPS_PER_PHASE * phase,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    resume = os.path.join(directory, "last.ckpt") if phase == 2 else None
    trainer.fit(Regression(), loader, ckpt_path=resume)


def plain(directory: str, phase: int, callback: bool) -> None:
    torch.manual_seed(0)
    # float64, plain SGD: the learning rate an update used is read back from the update itself.
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / 40)
    os.makedirs(directory, exist_ok=True)
    checkpoint = os.path.join(directory, "plain.pt")
    start = 0
    if phase == 2:
        saved = torch.load(checkpoint)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        start = saved["step"]
    if callback:
        import optwatch

        optwatch.watch(model, optimizer, start_step=start)
    generator = torch.Generator().manual_seed(start)
    for step in range(start, STEPS_PER_PHASE * phase):
        x = torch.randn(16, 8, generator=generator, dtype=torch.float64)
        loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True).tanh())
        optimizer.zero_grad()
        loss.backward()
        bias = model[2].bias
        before, grad = bias.detach().clone(), bias.grad.detach().clone()
        optimizer.step()
        schedule.step()
        emit(step, float(loss), float((before - bias.detach()) / grad))
    saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}
    torch.save({**saved, "step": STEPS_PER_PHASE * phase}, checkpoint)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", choices=["hf", "lightning", "plain"], required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--phase", type=int, choices=[1, 2], required=True)
    parser.add_argument("--callback", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    {"hf": hugging_face, "lightning": lightning, "plain": plain}[args.framework](args.dir, args.phase, args.callback)
