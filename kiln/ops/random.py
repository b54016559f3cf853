"""Random tensors: RandomNormal/Uniform(Like), Bernoulli, Multinomial.

Without a `seed` attribute each run draws fresh numbers from torch's global generator;
with one, every run of the layer draws the same numbers (a generator seeded per call).
No two runtimes share a random stream, so results match ONNX Runtime's in shape, dtype
and distribution, never value by value.
"""

from __future__ import annotations

import torch

from kiln.ops._common import ints, onnx_dtype
from kiln.ops.registry import register


def generator(seed: float | None, device: torch.device | None) -> torch.Generator | None:
    if seed is None:
        return None
    made = torch.Generator(device=device or "cpu")
    made.manual_seed(int(seed))
    return made


def _dtype(code: int | None, like: torch.Tensor | None) -> torch.dtype:
    if code is not None:
        return onnx_dtype(code)
    return like.dtype if like is not None else torch.float32


def _check_float(dtype: torch.dtype, op: str) -> None:
    if not dtype.is_floating_point:
        raise TypeError(f"{op} makes floating-point tensors; dtype {dtype} is not one")


def _uniform(shape: list[int], dtype: torch.dtype, low: float, high: float, seed: float | None,
             device: torch.device | None, op: str) -> torch.Tensor:
    _check_float(dtype, op)
    # draw in float32 at least: torch has no uniform_ for every dtype on every device
    draw = torch.empty(shape, dtype=torch.promote_types(dtype, torch.float32), device=device)
    draw.uniform_(low, high, generator=generator(seed, device))
    return draw.to(dtype)


def _normal(shape: list[int], dtype: torch.dtype, mean: float, scale: float, seed: float | None,
            device: torch.device | None, op: str) -> torch.Tensor:
    _check_float(dtype, op)
    draw = torch.empty(shape, dtype=torch.promote_types(dtype, torch.float32), device=device)
    draw.normal_(mean, scale, generator=generator(seed, device))
    return draw.to(dtype)


@register("RandomUniform", 1)
def random_uniform(*, shape: list[int], dtype: int = 1, high: float = 1.0, low: float = 0.0,
                   seed: float | None = None, device: torch.device | None = None) -> torch.Tensor:
    return _uniform(ints(shape), onnx_dtype(dtype), low, high, seed, device, "RandomUniform")


@register("RandomNormal", 1)
def random_normal(*, shape: list[int], dtype: int = 1, mean: float = 0.0, scale: float = 1.0,
                  seed: float | None = None, device: torch.device | None = None) -> torch.Tensor:
    return _normal(ints(shape), onnx_dtype(dtype), mean, scale, seed, device, "RandomNormal")


@register("RandomUniformLike", 1)
def random_uniform_like(x: torch.Tensor, *, dtype: int | None = None, high: float = 1.0,
                        low: float = 0.0, seed: float | None = None) -> torch.Tensor:
    return _uniform(list(x.shape), _dtype(dtype, x), low, high, seed, x.device,
                    "RandomUniformLike")


@register("RandomNormalLike", 1)
def random_normal_like(x: torch.Tensor, *, dtype: int | None = None, mean: float = 0.0,
                       scale: float = 1.0, seed: float | None = None) -> torch.Tensor:
    return _normal(list(x.shape), _dtype(dtype, x), mean, scale, seed, x.device,
                   "RandomNormalLike")


@register("Bernoulli", 15)
def bernoulli(x: torch.Tensor, *, dtype: int | None = None,
              seed: float | None = None) -> torch.Tensor:
    """1 with probability x, else 0, in `dtype` (default: x's)."""
    probability = x.to(torch.promote_types(x.dtype, torch.float32))
    # uniform draws below p, not torch.bernoulli: on CUDA that kernel asserts p in [0, 1] on
    # the device, which kills the process (the builder probes with random inputs)
    uniform = torch.rand(probability.shape, dtype=probability.dtype, device=x.device,
                         generator=generator(seed, x.device))
    return (uniform < probability).to(_dtype(dtype, x))


@register("Multinomial", 7)
def multinomial(x: torch.Tensor, *, dtype: int = 6, sample_size: int = 1,
                seed: float | None = None) -> torch.Tensor:
    """`sample_size` class indices per row of unnormalized log-probabilities [batch, classes]."""
    if x.dim() != 2:
        raise ValueError(f"Multinomial takes [batch, classes] input, got shape {list(x.shape)}")
    target = onnx_dtype(dtype)
    if target not in (torch.int32, torch.int64):
        raise TypeError(f"Multinomial outputs int32 or int64, not {target}")
    probabilities = torch.softmax(x.to(torch.float64), dim=1)
    picked = torch.multinomial(probabilities, sample_size, replacement=True,
                               generator=generator(seed, x.device))
    return picked.to(target)


def dropout_mask(x: torch.Tensor, ratio: float, seed: float | None) -> torch.Tensor:
    """Training-mode Dropout's keep mask: each element kept with probability 1 - ratio."""
    keep = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    keep.uniform_(0.0, 1.0, generator=generator(seed, x.device))
    return keep >= ratio

