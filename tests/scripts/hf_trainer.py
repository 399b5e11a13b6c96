"""The real Hugging Face Trainer on a tiny GPT-2 (built from a config, no weights), on the CPU: the ground
truth that ``optwatch run`` is checked against for a Trainer run. No optwatch import, unless ``--callback``
adds ``optwatch.integrations.transformers.OptwatchCallback`` (for a run started with plain ``python``).

Gradient accumulation 4 (so 4 backward() calls per optimizer step), the default clipping
(max_grad_norm=1.0), an evaluation every 5 optimizer steps, two epochs over a small synthetic token set.

Per optimizer step, one line of what the Trainer itself computed, taken from its own callback and its
own training_step:

    FRAMEWORK_STEP {"step": S, "global_step": G, "loss": ..., "grad_norm": ..., "samples": ..., "lr": ...}

- ``step`` counts from 0 as optwatch does (its first optimizer step is step 0); ``global_step`` is the
  Trainer's own count, from 1 (``step == global_step - 1``).
- ``loss`` is what the Trainer logs as ``loss`` for that step (logging_steps=1): the sum of the four
  micro-batch losses it passed to backward(), each already divided by the step's token count
  (``num_items_in_batch``), i.e. the mean token loss over the whole accumulated batch.
- ``grad_norm`` is the Trainer's logged ``grad_norm``: the global L2 norm before clipping, as returned
  by ``Accelerator.clip_grad_norm_`` (see ``FRAMEWORK_INFO`` for the functions it goes through).
- ``samples`` is the number of training sequences the step's micro-batches held (counted in
  ``training_step``); ``samples_expected`` is per_device_train_batch_size x gradient_accumulation_steps.

After each evaluation: ``FRAMEWORK_EVAL {"after_step": S, "global_step": G, "eval_loss": ..., "eval_samples": N,
"eval_runtime": seconds}`` (the evaluation runs after optimizer step S, before step S+1 begins); at the end
``FRAMEWORK_RUNTIME {"train_runtime": seconds}`` (the Trainer's own clock, evaluations included).
Once, first: ``FRAMEWORK_INFO {...}`` (versions, batch sizes, the clipping functions).
"""

import inspect
import json
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import accelerate  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

BATCH = 4
ACCUMULATION = 4
SEQ = 16
TRAIN_SEQUENCES = 160  # 10 optimizer steps an epoch
# ``--eval-sequences N``: a larger evaluation set (an evaluation-bound run).
EVAL_SEQUENCES = int(sys.argv[sys.argv.index("--eval-sequences") + 1]) if "--eval-sequences" in sys.argv else 24
EVAL_BATCH = 8
MAX_STEPS = 20
EVAL_EVERY = 5


class Tokens(torch.utils.data.Dataset):
    """Synthetic sequences with a learnable rule: next = (3 * token + 1) mod vocab, from a random start."""

    def __init__(self, count: int, vocab: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, vocab, (count, 1), generator=generator)
        steps = torch.arange(SEQ).unsqueeze(0)
        self.ids = (starts * 3**steps + (3**steps - 1) // 2) % vocab
        noise = torch.rand(count, SEQ, generator=generator) < 0.1
        self.ids[noise] = torch.randint(0, vocab, (int(noise.sum()),), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.ids[index]
        return {"input_ids": ids, "labels": ids.clone()}


def emit(kind: str, payload: dict) -> None:
    print(f"{kind} {json.dumps(payload)}", flush=True)


CLIPPING_CALLS = (
    "accelerator.clip_grad_norm_(",
    "torch.nn.utils.clip_grad_norm_(",
    "get_total_norm(",
    "clip_grads_with_norm_(",
    "clip_master_grads(",
    "model.clip_grad_norm_(",
    "self._clip_grad_norm_dtensor_aware(",
)


def clipping_path() -> dict:
    """Where the installed Trainer and Accelerator clip, read from their source (nothing patched or traced):
    for each method on the way, ``file:line call`` of each clipping call it makes."""
    methods = [
        getattr(Trainer, "_clip_grad_norm", None) or Trainer._inner_training_loop,
        accelerate.Accelerator.clip_grad_norm_,
        getattr(accelerate.Accelerator, "_clip_grad_norm_dtensor_aware", None),
    ]
    path = {}
    for method in filter(None, methods):
        lines, first = inspect.getsourcelines(method)
        source = (inspect.getsourcefile(method) or "?").split("site-packages/")[-1]
        calls = []
        for offset, line in enumerate(lines):
            code = line.split("#")[0]
            if code.lstrip().startswith((">>>", "...")) or "Should be used" in code:
                continue  # the docstring's example
            calls += [f"{source}:{first + offset} {call.split('(')[0]}" for call in CLIPPING_CALLS if call in code]
        path[method.__qualname__] = calls
    path["torch.distributed.is_available()"] = torch.distributed.is_available()
    return path


class CountingTrainer(Trainer):
    """The Trainer as is; ``training_step`` only counts the sequences of each micro-batch."""

    step_samples = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.step_samples += int(inputs["input_ids"].size(0))
        return super().training_step(model, inputs, num_items_in_batch)


class GroundTruth(TrainerCallback):
    def __init__(self):
        self.trainer: CountingTrainer | None = None

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
        emit(
            "FRAMEWORK_INFO",
            {
                "framework": "transformers.Trainer",
                "bf16": args.bf16,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "accelerate": accelerate.__version__,
                "optimizer": f"{type(optimizer).__name__}({type(inner).__name__})",
                "per_device_train_batch_size": args.per_device_train_batch_size,
                "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "samples_per_step": args.per_device_train_batch_size * args.gradient_accumulation_steps,
                "max_steps": args.max_steps,
                "eval_every": args.eval_steps,
                "max_grad_norm": args.max_grad_norm,
                "clipping": clipping_path(),
            },
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "train_runtime" in logs:
            emit("FRAMEWORK_RUNTIME", {"train_runtime": logs["train_runtime"]})
        if "loss" not in logs or "grad_norm" not in logs:
            return  # the closing summary (train_loss, runtime), or an evaluation's metrics
        samples = self.trainer.step_samples
        self.trainer.step_samples = 0
        emit(
            "FRAMEWORK_STEP",
            {
                "step": state.global_step - 1,
                "global_step": state.global_step,
                "loss": float(logs["loss"]),
                "grad_norm": float(logs["grad_norm"]),
                "samples": samples,
                "samples_expected": args.per_device_train_batch_size * args.gradient_accumulation_steps,
                "lr": logs.get("learning_rate"),
                "logged_at": time.perf_counter(),  # before the step's evaluation, if one follows
            },
        )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        emit(
            "FRAMEWORK_EVAL",
            {
                "after_step": state.global_step - 1,
                "global_step": state.global_step,
                "eval_loss": metrics.get("eval_loss"),
                "eval_samples": EVAL_SEQUENCES,
                "eval_runtime": metrics.get("eval_runtime"),
            },
        )


def main() -> None:
    # One thread: at this size, on a busy two-core machine, a second OpenMP thread makes it ten times slower.
    torch.set_num_threads(1)
    set_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=128, n_positions=64)
    model = GPT2LMHeadModel(config)
    train, evaluation = Tokens(TRAIN_SEQUENCES, config.vocab_size, 1), Tokens(EVAL_SEQUENCES, config.vocab_size, 2)
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            use_cpu=True,
            bf16="--bf16" in sys.argv,  # mixed precision: autocast in bfloat16, as accelerate does it
            seed=0,
            max_steps=MAX_STEPS,
            per_device_train_batch_size=BATCH,
            per_device_eval_batch_size=EVAL_BATCH,
            gradient_accumulation_steps=ACCUMULATION,
            learning_rate=3e-3,
            max_grad_norm=1.0,
            eval_strategy="steps",
            eval_steps=EVAL_EVERY,
            logging_strategy="steps",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            log_level="error",
        )
        callback = GroundTruth()
        callbacks: list[TrainerCallback] = [callback]
        if "--callback" in sys.argv:
            from optwatch.integrations.transformers import OptwatchCallback

            callbacks.append(OptwatchCallback())
        trainer = CountingTrainer(
            model=model, args=args, train_dataset=train, eval_dataset=evaluation, callbacks=callbacks
        )
        callback.trainer = trainer
        trainer.train()


if __name__ == "__main__":
    main()
