"""Run a training script with wrappers at optwatch's per-step hook points that do nothing: the floor.

optwatch finds the steps of a loop it was not told about at ``torch.autograd.backward``, the optimizers'
global step pre- and post-hooks and ``clip_grad_norm_`` (``optwatch.probe.hooks``). Here each of them calls
an empty function before and after the original, nothing else: what any tool that hooks there pays,
whatever it does in its hooks. ``benchmarks/wall_clock.py --configs ...,hooks-only`` runs it.

    python benchmarks/null_hooks.py SCRIPT [ARGS...]
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.utils
from lockstep import run_script_as_main
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook


def nothing(*args: object) -> None:
    pass


def install() -> Callable[[], None]:
    """Install the empty wrappers; returns what takes them out again."""
    backward_original = torch.autograd.backward

    def backward(tensors, *args, **kwargs):
        nothing(tensors)
        result = backward_original(tensors, *args, **kwargs)
        nothing(tensors)
        return result

    clip_original = torch.nn.utils.clip_grad_norm_

    @functools.wraps(clip_original)
    def clip_grad_norm_(parameters, *args, **kwargs):
        if not isinstance(parameters, (list, tuple, torch.Tensor)):
            parameters = list(parameters)  # as optwatch does: the probe and the clip read a generator once
        nothing(parameters)
        result = clip_original(parameters, *args, **kwargs)
        nothing(result)
        return result

    torch.autograd.backward = backward
    torch.nn.utils.clip_grad_norm_ = clip_grad_norm_
    pre = register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: nothing(optimizer))
    post = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: nothing(optimizer))

    def remove() -> None:
        torch.autograd.backward = backward_original
        torch.nn.utils.clip_grad_norm_ = clip_original
        pre.remove()
        post.remove()

    return remove


def main() -> None:
    install()
    run_script_as_main("python benchmarks/null_hooks.py SCRIPT [ARGS...]")


if __name__ == "__main__":
    main()
