"""Attention tactics for kiln.Attention: torch's scaled_dot_product_attention, letting it
choose a kernel, or pinned to flash / memory-efficient / math; on the CPU also the
explicit product, softmax and product.

q, k and v arrive in their producers' layouts and are only viewed as [B, H, S, D]; the
flash and memory-efficient kernels take such strided views directly and write their
output as [B, S, H, D] in memory, so the transpose back costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from kiln.kernels.registry import LayerSpec, Tactic, Target, register_tactic
from kiln.ops.fused import to_bhsd

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # torch < 2.3
    SDPBackend = sdpa_kernel = None


def layout_attrs(layer: LayerSpec) -> tuple[tuple[str, str, str], float | None, bool, bool]:
    """(q, k, v layouts), scale, whether the output is [B, S, H, D], and whether fully
    masked rows come out as zeros."""
    attrs = layer.attrs
    layouts = (attrs.get("q_layout", "bhsd"), attrs.get("k_layout", "bhsd"),
               attrs.get("v_layout", "bhsd"))
    return (layouts, attrs.get("scale"), attrs.get("out_layout", "bhsd") == "bshd",
            bool(attrs.get("zero_nan_rows", 0)))


class _Sdpa(Tactic):
    ops = (("kiln", "Attention"),)
    backend: str | None = None

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        if self.backend is None:
            return True
        if target.device.type != "cuda" or sdpa_kernel is None:
            return False
        has_mask = len(layer.inputs) > 3 and layer.inputs[3] is not None
        if self.backend == "FLASH_ATTENTION":
            return not has_mask and layer.precision in ("fp16", "bf16")
        return True

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        layouts, scale, bshd_out, zero_nan = layout_attrs(layer)
        causal = bool(layer.attrs.get("is_causal", 0))
        backend = getattr(SDPBackend, self.backend) if self.backend else None

        def run(q, k, v, mask=None):
            q, k, v = (to_bhsd(t, lay) for t, lay in zip((q, k, v), layouts))
            if k.stride(-1) != 1:  # a key the model stored transposed: kernels need D last
                k = k.contiguous()
            if mask is not None and mask.dtype != torch.bool and mask.dtype != q.dtype:
                mask = mask.to(q.dtype)
            if mask is not None and mask.dim() < 2:  # SDPA wants [.., q, kv]; a scalar or
                mask = mask.reshape((1,) * (2 - mask.dim()) + tuple(mask.shape))  # row bias
            if mask is not None and (mask.shape[-1] != k.shape[-2] or mask.stride(-1) != 1):
                # CUDA's kernels need the key axis dense: SDPA would broadcast a mask of one
                # key column with stride 0 there
                mask = mask.expand(*mask.shape[:-1], k.shape[-2]).contiguous()

            with sdpa_kernel(backend) if backend is not None else nullcontext():
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                                     is_causal=causal)
            if zero_nan:
                out = torch.nan_to_num(out, nan=0.0, posinf=float("inf"), neginf=float("-inf"))
            return out.transpose(1, 2) if bshd_out else out

        return run


@register_tactic
class Sdpa(_Sdpa):
    name = "sdpa"
    priority = 10


@register_tactic
class SdpaFlash(_Sdpa):
    name = "sdpa-flash"
    backend = "FLASH_ATTENTION"
    priority = 20
    min_level = 1


@register_tactic
class SdpaEfficient(_Sdpa):
    name = "sdpa-efficient"
    backend = "EFFICIENT_ATTENTION"
    priority = 30
    min_level = 1


@register_tactic
class SdpaCudnn(_Sdpa):
    name = "sdpa-cudnn"
    backend = "CUDNN_ATTENTION"
    priority = 40
    min_level = 2

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return SDPBackend is not None and hasattr(SDPBackend, self.backend) and super(
        ).supports(layer, target)


@register_tactic
class AttentionExplicitCPU(Tactic):
    """Scores, softmax and the weighted sum as three torch calls, in place where they can
    be. On one CPU thread at short sequences torch's flash kernel loses to this: khmersm's
    6 heads of 32 over 187 tokens, 0.58 ms a layer through SDPA (with the copy of its
    pre-transposed key), 0.53 explicit, where the key's stored [B, H, D, S] layout is what
    the first product wants."""

    name = "attention-explicit"
    ops = (("kiln", "Attention"),)
    priority = 15
    min_level = 1  # only where timing shows it wins

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return target.device.type == "cpu" and not layer.attrs.get("is_causal", 0)

    def softmax(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The softmax over the scores' last axis (which the function may overwrite)."""
        return lambda scores: torch.softmax(scores, dim=-1)

    def masked_softmax(self) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
        """softmax(scores with the mask applied), scores free to overwrite."""
        softmax = self.softmax()

        def masked(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            if mask is not None:
                if mask.dtype == torch.bool:
                    scores.masked_fill_(~mask, float("-inf"))
                else:
                    scores.add_(mask)
            return softmax(scores)

        return masked

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        layouts, scale, bshd_out, zero_nan = layout_attrs(layer)
        masked_softmax = self.masked_softmax()

        def run(q, k, v, mask=None):
            q, k, v = (to_bhsd(t, lay) for t, lay in zip((q, k, v), layouts))
            factor = q.shape[-1] ** -0.5 if scale is None else scale
            scores = torch.matmul(q * factor, k.transpose(-1, -2))
            probs = masked_softmax(scores, mask)
            if zero_nan:  # fully masked rows: zeros, as torch's SDPA export guards them
                probs.masked_fill_(torch.isnan(probs), 0.0)
            out = torch.matmul(probs, v)
            return out.transpose(1, 2) if bshd_out else out

        return run
