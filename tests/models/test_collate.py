"""``collate``: the batch the model sees is ``torch.stack``'s, made by one thread."""

from __future__ import annotations

import pytest
import torch

from consumers.models.encoder import collate


def _images(n: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(n)
    return [torch.randn(3, 8, 6, generator=generator).to(dtype) for _ in range(n)]


def test_collate_equals_torch_stack() -> None:
    tensors = _images(5)
    batch = collate(tensors)
    assert batch.shape == (5, 3, 8, 6)
    assert batch.dtype == torch.float32
    assert torch.equal(batch, torch.stack(tensors))
    # A copy: the batch does not alias the items (they are freed while it is in use).
    tensors[0].zero_()
    assert not torch.equal(batch[0], tensors[0])


def test_collate_of_non_contiguous_and_inference_tensors() -> None:
    with torch.inference_mode():
        tensors = [t.transpose(1, 2) for t in _images(3)]
        assert torch.equal(collate(tensors), torch.stack(tensors))


def test_dtypes_numpy_lacks_take_torch_stack() -> None:
    tensors = _images(3, torch.bfloat16)
    batch = collate(tensors)
    assert batch.dtype == torch.bfloat16
    assert torch.equal(batch, torch.stack(tensors))


def test_unequal_shapes_fail_as_torch_stack_does() -> None:
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        collate([torch.zeros(3, 4, 4), torch.zeros(3, 5, 4)])
