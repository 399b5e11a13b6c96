"""What the training trains, found from what torch gives the probe: the model, its learning rate, the global
norm of its gradients."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import Any

import torch

from optwatch.probe.vectors import as_vector, sparse_norms


def learning_rate_of(lr: Any) -> float | torch.Tensor | None:
    """A param group's ``lr`` as one number (a device tensor stays one, read back later), or None when it
    is not one: a rate per dimension, a schedule object."""
    if type(lr) is float:
        return lr  # the usual case, at every step
    if isinstance(lr, bool):
        return None
    if isinstance(lr, torch.Tensor) and lr.device.type != "cpu":
        return lr.detach() if lr.numel() == 1 else None
    try:
        return float(lr) if lr is not None else None
    except (TypeError, ValueError, RuntimeError):
        return None


def global_norm(grads: list[torch.Tensor]) -> torch.Tensor | None:
    """The 2-norm of all ``grads`` together, in float32 on the first one's device (None without any)."""
    sparse = [g for g in grads if g is not None and g.is_sparse]
    grads = [g for g in grads if g is not None and not g.is_sparse]
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for grad in grads:
        by_device.setdefault(grad.device, []).append(grad)
    norms = [torch.linalg.vector_norm(as_vector(torch._foreach_norm(group)).float()) for group in by_device.values()]
    norms += sparse_norms(sparse)
    if not norms:
        return None
    if len(norms) == 1:
        return norms[0]
    first = norms[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(first, non_blocking=True) for n in norms]))


def params_of(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters ``optimizer`` trains, group by group, in its order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def largest_module_of(*optimizers: torch.optim.Optimizer) -> torch.nn.Module | None:
    """The live module with the most parameters that holds some trained by ``optimizers`` and no trainable
    ones they leave out. Frozen ones count in: a model fine-tuned with its backbone frozen, or through LoRA
    adapters, is the whole model (its parameters named as the script names them), not its largest trained
    part; a frozen module of its own (a teacher) holds none trained, and a GAN's wrapper holds the other
    optimizer's."""
    trained = {id(p) for optimizer in optimizers for p in params_of(optimizer)}
    return largest_module(lambda param: id(param) in trained, frozen_in=True)


def largest_module(trained: Callable[[torch.Tensor], bool], frozen_in: bool = False) -> torch.nn.Module | None:
    """The live module with the most parameters, all of them ``trained`` (``frozen_in``: or frozen, with one
    trained at least). A walk over every object: once."""
    best, best_size = None, (0, 0)
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.nn.Module):  # type(): isinstance trips lazy deprecated objects
            params = list(obj.parameters())
            # On a tie in parameters, the module with more submodules: a wrapper over its only child.
            size = (len(params), sum(1 for _ in obj.modules())) if params else (0, 0)
            if size <= best_size:
                continue
            if frozen_in:
                ours = [trained(p) for p in params]
                if any(ours) and all(mine or not p.requires_grad for mine, p in zip(ours, params)):
                    best, best_size = obj, size
            elif all(trained(p) for p in params):
                best, best_size = obj, size
    return best


def _modules_holding(params: list[torch.Tensor]) -> list[tuple[int, torch.nn.Module]]:
    """Every live module that holds every one of ``params`` (none for no ``params``), with its number of
    parameters, in the order the collector lists them. A walk over every object."""
    wanted = {id(p) for p in params}
    holders = []
    for obj in gc.get_objects() if wanted else ():
        if issubclass(type(obj), torch.nn.Module):
            held = {id(p) for p in obj.parameters()}
            if wanted <= held:
                holders.append((len(held), obj))
    return holders


def largest_module_holding(params: list[torch.Tensor]) -> torch.nn.Module | None:
    """The live module with the most parameters that holds every one of ``params``, whatever else it holds:
    what they are named from when no model is theirs alone."""
    holders = _modules_holding(params)
    return max(holders, key=lambda pair: pair[0])[1] if holders else None


def smallest_module_holding(params: list[torch.Tensor]) -> torch.nn.Module | None:
    """The live module with the fewest parameters that holds every one of ``params``: the model an optimizer
    given more of it later (``add_param_group``: a backbone unfrozen after the head) trains."""
    holders = _modules_holding(params)
    return min(holders, key=lambda pair: pair[0])[1] if holders else None


def attribute_name_of(params: list[torch.Tensor]) -> str | None:
    """The dotted name (``discriminator``, ``heads.policy``) of the smallest live module that holds every one of
    ``params``, in the largest module that holds it; None when it is a model of its own. Once per optimizer,
    for the names of a run's several optimizers."""
    holders = sorted(_modules_holding(params), key=lambda pair: pair[0])
    if len(holders) < 2:
        return None
    smallest, largest = holders[0][1], holders[-1][1]
    if len(params) == 1:  # (an optimizer per parameter, as optimizer-in-backward makes them: the parameter's name)
        return next((name for name, param in largest.named_parameters() if param is params[0]), None)
    for name, module in largest.named_modules():
        if module is smallest:
            return name or None
    return None


def names_in_main(params: list[torch.Tensor]) -> dict[int, str]:
    """Each of ``params`` named after the script's global module that holds it (``trunk.0.weight``,
    ``head_a.weight``), for a model made of parts no one module holds: a trunk and its heads, an encoder
    and a decoder, made apart and trained by one optimizer."""
    main = sys.modules.get("__main__")
    wanted = set(map(id, params))
    names: dict[int, str] = {}
    for global_name, value in list(vars(main).items()) if main is not None else ():
        # (type(), not isinstance(): no global's own __class__ runs)
        if global_name.startswith("_") or not issubclass(type(value), torch.nn.Module):
            continue
        for name, param in value.named_parameters():
            if id(param) in wanted:
                names.setdefault(id(param), f"{global_name}.{name}")
    return names


def compiled_whole(model: torch.nn.Module) -> bool:
    """``torch.compile(model)``'s wrapper, or a model compiled in place (``model.compile()``): a global module
    hook would make the first warn the script and the second trace it."""
    return getattr(model, "_orig_mod", None) is not None or getattr(model, "_compiled_call_impl", None) is not None
