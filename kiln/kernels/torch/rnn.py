"""Two LSTM tactics for layers that use nothing torch's LSTM lacks (constant weights, the
default activations, no peepholes, clipping, coupled gates or per-batch sequence lengths;
forward or bidirectional), timed against each other:

- lstm-torch: torch's fused LSTM, one call for the whole sequence and both directions
  (oneDNN's RNN primitive on the CPU): 437 us for 20 steps of batch 4, hidden 128, where
  the reference's Python loop takes 1246.
- lstm-steps: one GEMM over [x_t, h] per step, the gates in two passes; for the short
  sequences of streaming models, where oneDNN's per-call setup dominates (one step,
  hidden 128: 32 us, torch's LSTM 97, the reference 80; silero-vad's case).

ONNX orders the gates i, o, f, c and keeps the input and recurrence biases apart; torch
orders them i, f, g(=c), o, so the weights are reordered once when the engine is built.
CPU only for now (on CUDA torch would call cuDNN, not yet run on a GPU here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kiln.kernels.registry import LayerSpec, Tactic, Target, register_tactic
from kiln.ops.tensors import to_torch

_TORCH_ORDER = (0, 2, 3, 1)  # torch's i, f, g, o as indices into ONNX's i, o, f, c


def _reorder(gates: torch.Tensor) -> torch.Tensor:
    chunks = gates.chunk(4, dim=0)
    return torch.cat([chunks[i] for i in _TORCH_ORDER]).contiguous()


class _Lstm(Tactic):
    ops = (("", "LSTM"),)
    replaces_inputs = (1, 2, 3)

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        attrs, inputs = layer.attrs, layer.inputs
        consts = layer.constant_inputs
        default_acts = [a.lower() for a in attrs.get("activations") or []] in (
            [], ["sigmoid", "tanh", "tanh"], ["sigmoid", "tanh", "tanh"] * 2)
        unused = all(i >= len(inputs) or inputs[i] is None for i in (4, 7))
        return (target.device.type == "cpu" and 1 in consts and 2 in consts
                and (len(inputs) < 4 or inputs[3] is None or 3 in consts) and unused
                and default_acts and not attrs.get("clip") and not attrs.get("input_forget")
                and attrs.get("direction", "forward") in ("forward", "bidirectional")
                and not attrs.get("activation_alpha") and not attrs.get("activation_beta")
                and layer.input_dtypes[:1] == ["fp32"])

    def prepare(self, layer: LayerSpec, target: Target) -> dict[str, torch.Tensor]:
        w, r = to_torch(layer.constant_inputs[1]), to_torch(layer.constant_inputs[2])
        hidden = r.shape[-1]
        b = layer.constant_inputs.get(3)
        b = to_torch(b) if b is not None else torch.zeros(w.shape[0], 8 * hidden)
        tensors = {}
        for d in range(w.shape[0]):
            tensors[f"w_ih{d}"] = _reorder(w[d].float())
            tensors[f"w_hh{d}"] = _reorder(r[d].float())
            tensors[f"b_ih{d}"] = _reorder(b[d, :4 * hidden].float())
            tensors[f"b_hh{d}"] = _reorder(b[d, 4 * hidden:].float())
        return tensors

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        directions = 2 if layer.attrs.get("direction") == "bidirectional" else 1
        hidden = tensors["w_hh0"].shape[-1]
        batch_major = bool(layer.attrs.get("layout", 0))
        count = len(layer.outputs)
        sequence = self.sequence(tensors, directions, hidden)

        def run(x, _w=None, _r=None, _b=None, _lens=None, h0=None, c0=None, _p=None):
            if batch_major:  # ONNX layout 1: [batch, seq, ...] and states [batch, dirs, H]
                x = x.transpose(0, 1)
                h0 = None if h0 is None else h0.transpose(0, 1)
                c0 = None if c0 is None else c0.transpose(0, 1)
            zeros = x.new_zeros(directions, x.shape[1], hidden)
            y, h, c = sequence(x, zeros if h0 is None else h0, zeros if c0 is None else c0)
            if batch_major:
                y, h, c = y.permute(2, 0, 1, 3), h.transpose(0, 1), c.transpose(0, 1)
            results = (y, h, c)
            return results[:count] if count > 1 else results[0]

        return run

    def sequence(self, tensors: dict[str, torch.Tensor], directions: int, hidden: int
                 ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple]:
        """(x [seq, batch, in], h0, c0 [dirs, batch, H]) -> (y [seq, dirs, batch, H], h, c)."""
        raise NotImplementedError


@register_tactic
class LstmTorch(_Lstm):
    name = "lstm-torch"
    priority = 25

    def sequence(self, tensors, directions, hidden):
        flat = [tensors[f"{k}{d}"] for d in range(directions)
                for k in ("w_ih", "w_hh", "b_ih", "b_hh")]

        def run(x, h0, c0):
            seq, batch = x.shape[0], x.shape[1]
            out, h, c = torch._VF.lstm(x.contiguous(), (h0.contiguous(), c0.contiguous()),
                                       flat, True, 1, 0.0, False, directions == 2, False)
            return out.reshape(seq, batch, directions, hidden).permute(0, 2, 1, 3), h, c

        return run


@register_tactic
class LstmSteps(_Lstm):
    name = "lstm-steps"
    priority = 20  # streaming models run a step or a few per call

    def sequence(self, tensors, directions, hidden):
        # per direction: [in + H, 4H] so that [x_t, h] @ it gives the gates at once
        weights = [torch.cat([tensors[f"w_ih{d}"], tensors[f"w_hh{d}"]], 1).t().contiguous()
                   for d in range(directions)]
        biases = [tensors[f"b_ih{d}"] + tensors[f"b_hh{d}"] for d in range(directions)]

        def one_direction(x, h, c, d: int):
            ys: list[torch.Tensor | None] = [None] * x.shape[0]  # filled in time order
            steps = range(x.shape[0] - 1, -1, -1) if d == 1 else range(x.shape[0])
            for t in steps:
                gates = torch.addmm(biases[d], torch.cat([x[t], h], 1), weights[d])
                sig = torch.sigmoid(gates)
                c = torch.addcmul(sig[:, hidden:2 * hidden] * c, sig[:, :hidden],
                                  torch.tanh(gates[:, 2 * hidden:3 * hidden]))
                h = sig[:, 3 * hidden:] * torch.tanh(c)
                ys[t] = h
            return torch.stack(ys), h, c

        def run(x, h0, c0):
            outs = [one_direction(x, h0[d], c0[d], d) for d in range(directions)]
            y = torch.stack([o[0] for o in outs], 1)
            return y, torch.stack([o[1] for o in outs]), torch.stack([o[2] for o in outs])

        return run
