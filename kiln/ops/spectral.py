"""Signal processing: DFT, STFT, the Hann/Hamming/Blackman windows, MelWeightMatrix.

ONNX carries complex numbers as a trailing axis of 2 (real, imaginary); a real signal has
a trailing axis of 1. Transforms run in torch.fft at float32 or wider.
"""

from __future__ import annotations

import math

import torch

from kiln.ir import DType
from kiln.ops._common import axis as norm_axis
from kiln.ops.registry import register
from kiln.ops.tensors import torch_dtype


def _complex(x: torch.Tensor) -> torch.Tensor:
    """[..., 1] real or [..., 2] (re, im) -> complex [...]."""
    work = x if x.dtype == torch.float64 else x.to(torch.float32)
    if x.shape[-1] == 1:
        return work[..., 0].to(torch.complex128 if work.dtype == torch.float64
                               else torch.complex64)
    if x.shape[-1] != 2:
        raise ValueError(f"a DFT signal's last axis must be 1 (real) or 2 (complex), "
                         f"got {x.shape[-1]}")
    return torch.complex(work[..., 0], work[..., 1])


def _pairs(z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.stack([z.real, z.imag], dim=-1).to(dtype)


def dft_impl(x: torch.Tensor, length: int | None, dim: int, inverse: int,
             onesided: int) -> torch.Tensor:
    dim = norm_axis(dim, x.dim())
    if dim == x.dim() - 1:
        raise ValueError("the DFT axis cannot be the last axis (it holds real/imaginary)")
    if length is None:
        length = 2 * (x.shape[dim] - 1) if inverse and onesided else x.shape[dim]
    signal = _complex(x)
    if inverse and onesided:
        return torch.fft.irfft(signal, n=length, dim=dim).unsqueeze(-1).to(x.dtype)
    if inverse:
        return _pairs(torch.fft.ifft(signal, n=length, dim=dim), x.dtype)
    spectrum = torch.fft.fft(signal, n=length, dim=dim)
    if onesided:
        spectrum = spectrum.narrow(dim, 0, length // 2 + 1)
    return _pairs(spectrum, x.dtype)


def _length(value: torch.Tensor | None) -> int | None:
    return None if value is None or value.numel() == 0 else int(value.reshape(-1)[0].item())


@register("DFT", 17, host_inputs=(1,))
def dft_17(x: torch.Tensor, dft_length: torch.Tensor | None = None, *, axis: int = 1,
           inverse: int = 0, onesided: int = 0) -> torch.Tensor:
    return dft_impl(x, _length(dft_length), axis, inverse, onesided)


@register("DFT", 20, host_inputs=(1, 2))
def dft(x: torch.Tensor, dft_length: torch.Tensor | None = None,
        axis: torch.Tensor | None = None, *, inverse: int = 0,
        onesided: int = 0) -> torch.Tensor:
    dim = -2 if axis is None else _length(axis)
    return dft_impl(x, _length(dft_length), dim, inverse, onesided)


@register("STFT", 17, host_inputs=(1, 3))
def stft(signal: torch.Tensor, frame_step: torch.Tensor, window: torch.Tensor | None = None,
         frame_length: torch.Tensor | None = None, *, onesided: int = 1) -> torch.Tensor:
    """[batch, length, 1|2] -> [batch, frames, bins, 2]."""
    step = _length(frame_step)
    size = _length(frame_length)
    if size is None:
        size = signal.shape[-2] if window is None else window.shape[0]
    span = size if window is None else window.shape[0]
    frames = 1 + (signal.shape[-2] - size) // step
    z = _complex(signal)  # [batch, length]
    need = (frames - 1) * step + span
    if need > z.shape[-1]:  # the last frame may run past the end: zeros
        z = torch.nn.functional.pad(z, [0, need - z.shape[-1]])
    framed = z.unfold(-1, span, step)[..., :frames, :]  # [batch, frames, span]
    if window is not None:
        framed = framed * window.to(framed.real.dtype)
    spectrum = torch.fft.fft(framed, n=size, dim=-1)
    if onesided:
        spectrum = spectrum[..., : size // 2 + 1]
    return _pairs(spectrum, signal.dtype)


def _window(size: torch.Tensor, periodic: int, output_datatype: int, terms,
            device: torch.device | None) -> torch.Tensor:
    n = _length(size)
    denominator = n if periodic else n - 1
    index = torch.arange(n, dtype=torch.float64)
    values = sum(c * torch.cos(index * (2 * math.pi * k) / denominator)
                 for k, c in enumerate(terms))
    return values.to(device=device, dtype=torch_dtype(DType(int(output_datatype))))


@register("HannWindow", 17, host_inputs=(0,))
def hann_window(size: torch.Tensor, *, output_datatype: int = 1,
                device: torch.device | None = None,
                periodic: int = 1) -> torch.Tensor:
    return _window(size, periodic, output_datatype, (0.5, -0.5), device)


@register("HammingWindow", 17, host_inputs=(0,))
def hamming_window(size: torch.Tensor, *, output_datatype: int = 1,
                   device: torch.device | None = None,
                   periodic: int = 1) -> torch.Tensor:
    alpha = 25.0 / 46.0
    return _window(size, periodic, output_datatype, (alpha, -(1 - alpha)), device)


@register("BlackmanWindow", 17, host_inputs=(0,))
def blackman_window(size: torch.Tensor, *, output_datatype: int = 1,
                    device: torch.device | None = None,
                    periodic: int = 1) -> torch.Tensor:
    return _window(size, periodic, output_datatype, (0.42, -0.5, 0.08), device)


@register("MelWeightMatrix", 17, host_inputs=(0, 1, 2, 3, 4))
def mel_weight_matrix(
    num_mel_bins: torch.Tensor, dft_length: torch.Tensor, sample_rate: torch.Tensor,
    lower_edge_hertz: torch.Tensor, upper_edge_hertz: torch.Tensor, *,
    output_datatype: int = 1, device: torch.device | None = None,
) -> torch.Tensor:
    """Triangular filters, evenly spaced in mel, over the one-sided spectrum's bins."""
    mels, length = _length(num_mel_bins), _length(dft_length)
    rate = sample_rate.reshape(-1)[0].item()
    low, high = (float(t.reshape(-1)[0].item()) for t in (lower_edge_hertz, upper_edge_hertz))
    low_mel = 2595 * math.log1p(low / 700) / math.log(10)
    high_mel = 2595 * math.log1p(high / 700) / math.log(10)
    step = (high_mel - low_mel) / (mels + 2)
    hertz = 700 * torch.expm1((torch.arange(mels + 2, dtype=torch.float64) * step + low_mel)
                              / 2595 * math.log(10))
    edges = torch.floor((length + 1) * hertz / rate).to(torch.int64)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    j = torch.arange(length // 2 + 1).reshape(-1, 1)
    rising = (j - left) / (center - left).clamp(min=1)
    rising = torch.where(center == left, (j == center).to(torch.float64), rising)
    in_rise = (j >= left) & (j <= center)
    falling = (right - j) / (right - center).clamp(min=1)
    in_fall = (j >= center) & (j < right)
    weights = torch.where(in_fall, falling, torch.where(in_rise, rising, 0.0))
    return weights.to(device=device, dtype=torch_dtype(DType(int(output_datatype))))
