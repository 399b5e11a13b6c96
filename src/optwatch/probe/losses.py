"""What each optimizer's step backpropagated: the step's loss, and the losses of the other optimizers.

A step's loss is the sum of the scalars backpropagated since the previous step of any optimizer (what
gradient accumulation averages into the gradients it applies; a ``zero_grad()`` before the step, a batch
the script skips, clears them), unscaled when a GradScaler scaled them; under
a closure (LBFGS, Lightning) the closure's first evaluation. Every other optimizer that steps gets its loss by
the same rule, in the ``losses`` map of the primary's step it steps with.
"""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Callable
from typing import Any

import torch

from optwatch import protocol
from optwatch.probe.model import attribute_name_of, params_of

_TORCH_DIR = os.path.dirname(torch.__file__)
_OPTWATCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LossSum:
    """A sum of losses (a step's micro-batches), added up once they are read back (``readback``), in double
    precision: on the training thread it costs no operator (one per micro-batch, at every step, when it did)."""

    __slots__ = ("parts", "values")

    def __init__(self, parts: list[torch.Tensor]) -> None:
        self.parts = parts
        self.values: list[float] = [0.0] * len(parts)
        """The parts' values, filled in where they are read back."""

    def total(self) -> float:
        return sum(self.values)


class StepLosses:
    """The scalars backpropagated since the previous step of any optimizer."""

    def __init__(self) -> None:
        self._losses: list[torch.Tensor] = []
        self._scaled: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.closure_loss_taken = False
        """Inside an optimizer's ``step(closure)``: its first evaluation's loss is taken, the rest are not."""
        self.held = False
        """The step's loss is taken: later backward() calls until the step add none (SAM's second pass)."""
        self._taken_by_other: list[torch.Tensor] | None = None
        """The losses another optimizer's step took, no backward() since: the primary's step on the same
        gradients shares them (a decoder's optimizer stepping before the encoder's, on one loss)."""

    def backpropagated(
        self, tensor: torch.Tensor, in_closure: bool, weight: torch.Tensor | None = None, new_batch: bool = False
    ) -> None:
        """``backward()`` began on the scalar ``tensor``; ``in_closure``: inside an optimizer's step();
        ``weight``: what the script weighed its backward by (``backward(gradient=w)``); ``new_batch``: it
        consumed a DataLoader batch no backward had (not a second pass over the last one)."""
        if in_closure:
            if self.closure_loss_taken:
                return  # only the first evaluation is the step's loss
            self.closure_loss_taken = True
            if self._losses and not new_batch:
                # A first pass backpropagated before the step, the closure's a second on the same batch (SAM's
                # README form, ``loss.backward(); optimizer.step(closure)``): the loss is the first's, not their
                # sum. A closure on a batch of its own is the step's last micro-batch (Lightning's
                # accumulate_grad_batches runs it in the closure): it adds to the others.
                return
        elif self.held:
            return
        scaled = self._scaled.pop(id(tensor), None)
        if scaled is not None and scaled[0] is tensor:
            tensor = scaled[1]  # GradScaler.scale(loss): the loss as the script computed it
        tensor = tensor.detach()
        if weight is not None:
            # A loss minimised with its sign turned (WGAN's ``D_real.backward(mone)``): what is minimised is
            # -D_real, and the critic's loss the sum with it. A weight's size is a loss scale's, left out: the
            # loss as the script computed it. (One small operator, on the device: no sync.)
            tensor = tensor * weight.detach().sign().to(device=tensor.device, dtype=tensor.dtype)
        self._losses.append(tensor)
        self._taken_by_other = None
        self._scaled.clear()

    def scaled(self, scaled: torch.Tensor, loss: torch.Tensor) -> None:
        """GradScaler.scale(loss) gave ``scaled``: a backward on it backpropagates ``loss``."""
        if scaled.numel() == 1:
            self._scaled[id(scaled)] = (scaled, loss)

    @property
    def pending(self) -> bool:
        """Some were backpropagated since the last ``take``."""
        return bool(self._losses)

    @property
    def device(self) -> torch.device | None:
        return self._losses[-1].device if self._losses else None

    def take(self, by_other: bool = False) -> torch.Tensor | LossSum | None:
        """Their sum (None without any), and a new account for the next optimizer's step; ``by_other``: for
        an optimizer other than the primary, whose step after it on the same gradients shares them."""
        losses, self._losses = self._losses, []
        self.held = False
        if by_other:
            self._taken_by_other = losses or self._taken_by_other
        elif not losses and self._taken_by_other:
            losses, self._taken_by_other = self._taken_by_other, None
        if not losses:
            return None
        # (A loss of shape (1,) or (1, 1), ``.mean(dim=0)``'s, backpropagates as a scalar: one number all the same.)
        losses = [loss if not loss.dim() else loss.reshape(()) for loss in losses]
        if len(losses) == 1:
            return losses[0]
        return LossSum(losses)

    def clear(self) -> None:
        self._losses = []
        self._taken_by_other = None
        self.held = False
        self._scaled.clear()
        self.closure_loss_taken = False


def _trains_a_part_of(params: list[torch.Tensor], model: torch.nn.Module) -> bool:
    """Some of ``model``'s trainable parameters are not among ``params``: another optimizer's, as a LightningModule
    holds a GAN's two networks."""
    trained = set(map(id, params))
    return any(p.requires_grad and id(p) not in trained for p in model.parameters())


def _name_in_main(obj: Any) -> str | None:
    """The name the script's ``__main__`` gives ``obj`` among its globals, if it does."""
    main = sys.modules.get("__main__")
    for name, value in list(vars(main).items()) if main is not None else ():
        if value is obj and not name.startswith("_"):
            return name
    return None


class OptimizerNames:
    """A readable name for each optimizer: the script's own name for it (``optD``), else for the model it
    trains (``netD``), else that model's attribute name in the module holding it (a LightningModule's
    ``discriminator``: the class of the module its optimizers train, the same for both, said nothing; and
    so is the script's name for that module, ``model``, when it holds another optimizer's parameters too),
    else its class (``Discriminator``), numbered when two would share one."""

    def __init__(self, model_of: Callable[[torch.optim.Optimizer], torch.nn.Module | None]) -> None:
        self._model_of = model_of
        self._names: weakref.WeakKeyDictionary[torch.optim.Optimizer, str] = weakref.WeakKeyDictionary()
        self._sites: weakref.WeakKeyDictionary[torch.optim.Optimizer, tuple[str, int, int]] = (
            weakref.WeakKeyDictionary()
        )
        self._by_site: dict[tuple[str, int, int], tuple[str, weakref.ref[torch.optim.Optimizer]]] = {}
        """The name found for the optimizers made at a call in the script, and the one it was found for: a
        loop that makes one per task or fold (Reptile, test-time training, k-fold) names each as the one
        before, once that one is gone, without looking again through every live object (50 ms each time, on
        the training thread). While it lives, the new one is another's (a loop making one per model)."""

    def made(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer`` was just made: where, in the script (the first frame outside torch and optwatch)."""
        frame = sys._getframe(1)
        while frame is not None and (
            _TORCH_DIR in frame.f_code.co_filename or frame.f_code.co_filename.startswith(_OPTWATCH_DIR)
        ):
            frame = frame.f_back
        if frame is not None:  # (the call on the line: ``opt_d, opt_g = Adam(D...), Adam(G...)`` makes two)
            self._sites[optimizer] = (frame.f_code.co_filename, frame.f_lineno, frame.f_lasti)

    def _holds_anothers(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> bool:
        """``model`` holds parameters another optimizer trains: Lightning's ``toggle_optimizer`` sets them to
        ``requires_grad=False`` while this one steps, so that they do not read as trainable."""
        held = {id(p) for p in model.parameters()}
        others = [other for other in list(self._sites.keys()) if other is not optimizer]
        return any(id(p) in held for other in others for p in params_of(other))

    def __call__(self, optimizer: torch.optim.Optimizer) -> str:
        name = self._names.get(optimizer)
        if name is None:
            site = self._sites.get(optimizer)
            named_there = self._by_site.get(site) if site is not None else None
            base = _name_in_main(optimizer) or (named_there[0] if named_there and named_there[1]() is None else None)
            if base is None:
                model = self._model_of(optimizer)
                params = params_of(optimizer)
                named = model is not None and _name_in_main(model)
                if named and (_trains_a_part_of(params, model) or self._holds_anothers(optimizer, model)):
                    # ``model = GAN(); trainer.fit(model)``: both optimizers train a part of the global ``model``.
                    named = attribute_name_of(params) or named
                base = named or attribute_name_of(params) or type(model if model is not None else optimizer).__name__
            if site is not None:
                self._by_site[site] = (base, weakref.ref(optimizer))
            taken = set(self._names.values())
            name, number = base, 2
            # (``4`` and ``4``: ``4_2``, not ``42``, which reads as a module of its own)
            joint = "_" if base[-1:].isdigit() else ""
            while name in taken:
                name, number = f"{base}{joint}{number}", number + 1
            self._names[optimizer] = name
        return name


class StepRecords:
    """Step records on their way out. With one optimizer each goes as soon as it is made; with others that
    step after the primary in an iteration (a GAN's generator), the newest waits until they have stepped and
    added their losses to it (or the next step ends). Those that step before the primary's first step add
    theirs to the next record."""

    def __init__(self, name_of: Callable[[torch.optim.Optimizer], str]) -> None:
        self._name_of = name_of
        self._after_primary: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        self._before_primary: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        self._primary_stepped_once = False
        self._stepped_since_boundary: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        self._other_losses: dict[str, torch.Tensor] = {}
        self.others = False
        """Another optimizer than the primary has stepped in this run (else each record goes as it is made)."""
        self._held: dict[str, Any] | None = None
        self._ready: list[dict[str, Any]] = []

    def other_stepped(
        self, optimizer: torch.optim.Optimizer, loss: torch.Tensor | None, primary: torch.optim.Optimizer | None
    ) -> None:
        """An optimizer other than the primary stepped, with the losses backpropagated since the previous step
        of any optimizer: they go with the record of the primary's step it belongs with."""
        self.others = True
        name = self._name_of(optimizer)
        if optimizer not in self._before_primary and optimizer not in self._after_primary:
            (self._after_primary if self._primary_stepped_once else self._before_primary).add(optimizer)
            if self._primary_stepped_once and self._held is None and loss is not None:
                # Its first step after the primary's: the primary's record went already (nobody was known to
                # step after it); while it waits to be sent, the loss goes with it, not with the next step's.
                latest = self._latest_waiting()
                if latest is not None:
                    latest.setdefault("losses", {self._name_of(primary): latest["loss"]})[name] = loss
                    self._stepped_since_boundary.add(optimizer)
                    return
        self._stepped_since_boundary.add(optimizer)
        if optimizer in self._after_primary and self._held is not None:
            if loss is not None:
                losses = self._held.setdefault("losses", {self._name_of(primary): self._held["loss"]})
                losses[name] = loss
            self._release_when_complete()
        elif loss is not None:
            # Again after the primary's step, whose record went when every optimizer had stepped once: a burst
            # (SAC's actor, three updates every fourth critic step). Its last loss is the step's, as the script
            # logs it; its first went there already, and the rest went to the next step, the middle ones lost.
            latest = self._latest_waiting() if optimizer in self._after_primary else None
            if latest is not None and name in latest.get("losses", {}):
                latest["losses"][name] = loss
            else:
                self._other_losses[name] = loss

    def _latest_waiting(self) -> dict[str, Any] | None:
        """The newest step record released and not yet sent, if there is one."""
        return next((r for r in reversed(self._ready) if r.get("kind") == protocol.STEP), None)

    def add(self, record: dict[str, Any], primary: torch.optim.Optimizer | None) -> None:
        """The primary's new step record waits for the optimizers that step after it; the one before goes."""
        self.release()
        if self.others and (self._after_primary or self._before_primary):
            record["losses"] = {self._name_of(primary): record["loss"], **self._other_losses}
            self._other_losses.clear()
        self._held = record
        if self.others and self._after_primary:
            self._stepped_since_boundary = weakref.WeakSet()
            self._release_when_complete()
        elif self._primary_stepped_once:
            self.release()  # one optimizer: nobody adds to the record
        # (The first record waits for the first optimizers after the primary, whom nobody knows yet.)
        self._primary_stepped_once = True

    def _release_when_complete(self) -> None:
        if self._held is not None and all(o in self._stepped_since_boundary for o in self._after_primary):
            if self._after_primary or self._primary_stepped_once:
                self.release()

    def emit(self, record: dict[str, Any]) -> None:
        """Any other record (layers, metrics, events): it goes with the next flush, in order."""
        self._ready.append(record)

    def release(self) -> None:
        """The held record goes as it is (the run ends, or the next step's record is made)."""
        if self._held is not None:
            self._ready.append(self._held)
            self._held = None

    @property
    def has_ready(self) -> bool:
        return bool(self._ready)

    def take_ready(self) -> list[dict[str, Any]]:
        """The records ready to go, oldest first (handed over: the list is new after)."""
        ready, self._ready = self._ready, []
        return ready
