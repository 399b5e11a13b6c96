"""Per-tensor statistics gathered into one vector: the fused norm's own buffer when it has one."""

from __future__ import annotations

import pytest
import torch

from optwatch.probe.vectors import as_vector


def test_consecutive_views_of_one_buffer_are_that_buffer():
    buffer = torch.arange(5.0)
    assert as_vector([buffer[i] for i in range(5)]) is buffer
    assert as_vector([buffer[0]][:1]) is not buffer  # one view of a longer buffer is not all of it


@pytest.mark.parametrize(
    "pick",
    [
        lambda b: [b[i] for i in reversed(range(5))],  # out of order
        lambda b: [b[i] for i in range(4)],  # part of the buffer
        lambda b: [b[0], b[1], b[2], b[3], torch.full((5,), 9.0)[4]],  # the last from elsewhere
        lambda b: [b[i].clone() for i in range(5)],  # no buffer at all (what a CPU's foreach gives)
    ],
)
def test_anything_else_is_stacked_with_the_same_values(pick):
    buffer = torch.arange(5.0)
    scalars = pick(buffer)
    vector = as_vector(scalars)
    assert vector is not buffer
    assert vector.tolist() == [s.item() for s in scalars]


def test_cpu_foreach_norms_are_stacked():
    tensors = [torch.randn(3, 3), torch.randn(4), torch.randn(1)]
    norms = torch._foreach_norm(tensors, 2, dtype=torch.float32)
    assert as_vector(norms).tolist() == pytest.approx([t.norm().item() for t in tensors])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_foreach_norms_make_a_vector_of_their_values():
    """Where a torch version hands the fused norm's results out as views of one buffer, that buffer is the
    vector (no stack); torch 2.11's CUDA build allocates each apart, and they are stacked."""
    tensors = [torch.randn(64, 64, device="cuda"), torch.randn(64, device="cuda"), torch.randn(3, device="cuda")]
    for order in (1, 2):
        norms = torch._foreach_norm(tensors, order, dtype=torch.float32)
        vector = as_vector(norms)
        if norms[0]._base is not None:
            assert vector is norms[0]._base
        assert vector.tolist() == pytest.approx([t.norm(order).item() for t in tensors], rel=1e-5)
