"""optwatch next to torch's graph tools: torch.compile (wrapper and in place), torch.export, torch.jit.trace
and torch.func run as they do without it, and optwatch's probe keeps working."""

from __future__ import annotations

import re
import threading
import time
import warnings

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

from conftest import new_probe, records_of, train
from optwatch.probe.probe import Probe


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def start(**options) -> Probe:
    return new_probe("compile", **options).start()


def recorded(probe: Probe, kind: str = "step") -> list[dict]:
    return records_of(probe, kind)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(16, 16), nn.Tanh())])


def data() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(32, 16), torch.randn(32, 16)


def test_a_compiled_model_trains_under_optwatch_without_graph_breaks(recwarn):
    """Nothing of optwatch goes into the compiled graph, so it is not split; torch's warning about global
    hooks (which optwatch's check handles) is not passed on to the user, and is taken away at close."""
    filters = len(warnings.filters)
    probe = start()
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    train(torch.compile(model, backend="eager"), optimizer, *data(), steps=4)
    records = records_of(probe)
    steps = [r for r in records if r["kind"] == "step"]
    assert dict(counters["graph_break"]) == {}
    assert not [w for w in recwarn if "global hooks" in str(w.message)]
    assert [s["step"] for s in steps] == [0, 1, 2, 3] and all(s["optwatch_s"] >= 0 for s in steps)
    assert len(warnings.filters) == filters
    # Its parameters are named as the model names them, not through the wrapper ('_orig_mod.0.weight').
    [names] = {tuple(r["names"]) for r in records if r["kind"] == "layers"}
    assert names == tuple(f"{i}.{kind}" for i in (0, 2, 4, 6) for kind in ("weight", "bias"))


def test_gradient_accumulation_does_not_recompile_a_compiled_model():
    """A compiled module called several times a step: optwatch's state must not become a guard."""

    def graphs(with_probe: bool) -> int:
        torch._dynamo.reset()
        counters.clear()
        probe = start() if with_probe else None
        model = mlp()
        compiled = torch.compile(model, backend="eager")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = data()
        for _ in range(3):
            optimizer.zero_grad()
            for _ in range(4):
                nn.functional.mse_loss(compiled(x), y).backward()
            optimizer.step()
        if probe is not None:
            probe.close()
        return counters["stats"]["unique_graphs"]

    assert graphs(with_probe=True) == graphs(with_probe=False)


def test_hooks_coming_and_going_between_detail_steps_do_not_recompile_a_compiled_model():
    """Past its budget optwatch takes its hooks (the forward check's global one, the phase hooks on the
    root) away between detail steps and puts them back on the next. Dynamo keeps one graph for the steps
    with the hooks and one for those without; it must not guard on anything that changes at each
    detail step (a new hook's id), or every detail step would recompile, until torch gave up compiling."""

    def graphs(with_probe: bool) -> int:
        torch._dynamo.reset()
        counters.clear()
        probe = start(budget=0.01, grad_full_cadence_steps=10) if with_probe else None
        model = mlp()
        compiled = torch.compile(model, backend="eager")
        train(compiled, torch.optim.SGD(model.parameters(), lr=0.01), *data(), steps=200)
        if probe is not None:
            spaced = probe.detail_every > 1
            steps = recorded(probe)
            assert spaced and [s["step"] for s in steps] == list(range(200))
            assert {s["detailed"] for s in steps[20:]} == {True, False}
        return counters["stats"]["unique_graphs"]

    assert graphs(with_probe=True) <= graphs(with_probe=False) + 1
    assert dict(counters["graph_break"]) == {}


def test_a_model_compiled_in_place_trains_whole():
    """model.compile() traces the root module's hooks too: optwatch has none there, and the forward is
    timed as any other."""
    probe = start()
    model = mlp()
    model.compile(backend="eager")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    train(model, optimizer, *data(), steps=4)
    steps = recorded(probe)
    assert dict(counters["graph_break"]) == {}
    assert [s["step"] for s in steps] == [0, 1, 2, 3] and all(s["forward_s"] > 0 for s in steps[1:])


@pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)` when there are global hooks")
def test_the_forward_check_of_a_compiled_model_stays_out_of_its_graph_and_says_it_cannot_name_the_module():
    """torch.compile traces the forward check's global hooks with the model. They read the probe's copy of
    the model there: a guard that recompiled at the second step, whose tracing met the model a second time
    and crashed the script (an AssertionError of Dynamo's). They now return before reading anything of
    optwatch's: no recompile nor graph break that the model has not without optwatch. A NaN is reported at
    its step by the compiled model's output, which says that no module inside it can be named."""

    def run(with_probe: bool) -> tuple[int, list[dict]]:
        torch._dynamo.reset()
        counters.clear()
        probe = start(forward_check="always", budget=0.0) if with_probe else None
        model = mlp()
        compiled = torch.compile(model, backend="eager")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = data()
        poisoned = x.clone()
        poisoned[0, 0] = float("nan")
        for step in range(5):
            optimizer.zero_grad()
            nn.functional.mse_loss(compiled(poisoned if step == 3 else x), y).backward()
            optimizer.step()
        assert dict(counters["graph_break"]) == {}
        graphs = counters["stats"]["unique_graphs"]
        return graphs, recorded(probe, "alert") if probe is not None else []

    graphs, alerts = run(with_probe=True)
    assert graphs == run(with_probe=False)[0]
    [alert] = [a for a in alerts if a["type"] == "nonfinite"]
    assert alert["step"] == 3 and alert["module"] == "Sequential (compiled: no module inside it can be named)"
    assert "loss is nan" in alert["message"] and "0.weight" in alert["params"]


def test_export_and_jit_trace_mid_run_see_only_the_model():
    """Exporting or tracing the model while the probe runs: the graph holds the model's operators only,
    the training goes on, and the channel's thread lives on."""
    probe = start()
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = data()
    train(model, optimizer, x, y, steps=2)
    exported = torch.export.export(model, (x,))
    assert not [node for node in exported.graph.nodes if "sum" in str(node.target) or "detach" in str(node.target)]
    traced = torch.jit.trace(model, x)
    torch.testing.assert_close(traced(x), model(x))
    train(model, optimizer, x, y, steps=3)
    time.sleep(0.3)
    assert any(thread.name == "optwatch-channel" for thread in threading.enumerate())
    steps = recorded(probe)
    assert [s["step"] for s in steps] == [0, 1, 2, 3, 4]


def test_per_sample_gradients_with_torch_func_mid_run():
    """vmap(grad(...)) over the model (Opacus-style per-sample gradients): optwatch keeps none of its
    wrapped tensors, so the next ordinary step runs."""
    from torch.func import functional_call, grad, vmap

    probe = start()
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = data()
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss_of_one(p, xi, yi):
        return nn.functional.mse_loss(functional_call(model, p, (xi[None],)), yi[None])

    train(model, optimizer, x, y, steps=2)
    per_sample = vmap(grad(loss_of_one), in_dims=(None, 0, 0))(params, x, y)
    assert per_sample["0.weight"].shape == (32, 16, 16)
    train(model, optimizer, x, y, steps=2)
    assert [s["step"] for s in recorded(probe)] == [0, 1, 2, 3]


def test_a_train_step_compiled_before_the_probe_started_runs_its_wrappers_at_graph_breaks():
    """``torch.compile(train_step)`` made before ``optwatch.watch()``, first run after it: the wrappers must
    not be traced (each step recompiled, its steps unrecorded) and the losses are the script's own."""
    from torch.nn.utils import clip_grad_norm_

    def run(with_probe: bool) -> tuple[list[float], Probe | None]:
        torch._dynamo.reset()
        model = mlp()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        @torch.compile(backend="aot_eager")
        def train_step(x, y):
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            return loss

        probe = start() if with_probe else None
        torch.manual_seed(1)
        return [train_step(*data()).item() for _ in range(12)], probe

    bare, _ = run(with_probe=False)
    watched, probe = run(with_probe=True)
    assert watched == bare
    steps = recorded(probe)
    assert [s["step"] for s in steps] == list(range(12))
    assert [s["loss"] for s in steps] == pytest.approx(bare, rel=1e-6)


def test_without_torch_compile_the_wrappers_run_as_plain_calls():
    """Every optimizer's construction loads torch._dynamo, so a probe started after one finds it loaded. The
    wrappers still run as plain calls outside torch.compile: a ``torch.compiler.disable``d call sets up and
    takes down torch.compile's frame callback each time."""
    import sys

    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    assert "torch._dynamo" in sys.modules
    probe = start()
    x, y = data()
    train(model, optimizer, x, y, steps=3)
    through_dynamo: list[str] = []

    def look(frame, event, arg):
        caller = frame.f_back
        if (
            event == "call"
            and caller is not None
            and caller.f_code.co_filename.endswith(("optwatch/probe/hooks.py", "optwatch\\probe\\hooks.py"))
            and "_dynamo" in frame.f_code.co_filename
        ):
            through_dynamo.append(f"{caller.f_code.co_name} -> {frame.f_code.co_name}")

    sys.setprofile(look)
    try:
        train(model, optimizer, x, y, steps=2)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    finally:
        sys.setprofile(None)
    assert [s["step"] for s in recorded(probe)] == [0, 1, 2, 3, 4]
    assert through_dynamo == []


def test_a_whole_train_step_compiled_runs_as_it_does_without_optwatch():
    """torch.compile(train_step) with backward(), the clip, step() and zero_grad() inside: torch.compile traced
    optwatch's wrappers, recompiled at every call (40 steps took 37 s instead of 1.6 s, warnings on stderr)
    and the run's record had 2 of its 40 steps. The wrappers now run at graph breaks: every step is recorded,
    with the losses the script computes without optwatch, bit for bit."""
    import subprocess
    import sys

    from conftest import ROOT, SCRIPTS, optwatch, read_jsonl, steps_of

    script = str(SCRIPTS / "compiled_step.py")
    bare = subprocess.run([sys.executable, script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bare.returncode == 0, bare.stderr[-2000:]
    record = ROOT / ".pytest_cache" / "compiled_step.jsonl"
    record.parent.mkdir(exist_ok=True)
    watched = optwatch("run", "--headless", "--record", str(record), script)
    assert watched.returncode == 0, watched.stderr[-3000:]

    def losses(output: str) -> list[float]:
        return [
            float(line.split('"loss": ')[1].rstrip("}")) for line in output.splitlines() if line.startswith("TRUTH ")
        ]

    assert losses(watched.stdout) == losses(bare.stdout) and len(losses(bare.stdout)) == 40
    steps = steps_of(read_jsonl(record))
    assert [s["step"] for s in steps] == list(range(40))
    assert [s["loss"] for s in steps] == pytest.approx(losses(bare.stdout), rel=1e-6)

    def said(stderr: str) -> set[str]:  # torch's log lines without their time, process and frame
        lines = (line for line in stderr.splitlines() if line and not line.startswith("optwatch:"))
        return {re.sub(r"^\w\d+ [\d:.]+ \d+ (\S+\]) (\[\d+/\d+\] )?", r"\1 ", line) for line in lines}

    assert said(watched.stderr) <= said(bare.stderr), said(watched.stderr) - said(bare.stderr)


def test_a_model_compiled_in_place_is_said_to_be_why_no_module_is_named():
    """``model.compile()`` runs every module call inside the graph, the model's own output too: no forward
    check can run. The NaN's alert said "no forward check ran at this step: optwatch's --budget spaces them
    out; every step is checked from now on: the first checked step names the module", which never came."""
    torch._dynamo.reset()
    probe = start(forward_check="always", budget=0.0)
    model = mlp()
    model.compile(backend="eager")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = data()
    poisoned = x.clone()
    poisoned[0, 0] = float("nan")
    for step in range(6):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(poisoned if step >= 3 else x), y).backward()
        optimizer.step()
    alerts = [a for a in recorded(probe, "alert") if a["type"] == "nonfinite"]
    assert alerts and alerts[0]["step"] == 3, alerts
    said = " ".join(a["message"] for a in alerts)
    assert "compiled in place" in said and "no forward check ran" not in said, said
