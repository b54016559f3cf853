"""Recurrent layers: LSTM, GRU and RNN, forward, reverse or bidirectional.

One time step at a time, as ONNX defines them (gate order i, o, f, c for LSTM; z, r, h for
GRU), with per-batch sequence lengths, clipping, peepholes and custom activations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kiln.ops.registry import register

Act = Callable[[torch.Tensor], torch.Tensor]


def _activation(name: str, alpha: float | None, beta: float | None) -> Act:
    key = name.lower()
    if key == "sigmoid":
        return torch.sigmoid
    if key == "tanh":
        return torch.tanh
    if key == "relu":
        return torch.relu
    if key == "affine":
        return lambda x: (alpha if alpha is not None else 1.0) * x + (beta or 0.0)
    if key == "leakyrelu":
        return lambda x: F.leaky_relu(x, alpha if alpha is not None else 0.01)
    if key == "thresholdedrelu":
        a = alpha if alpha is not None else 1.0
        return lambda x: torch.where(x > a, x, torch.zeros_like(x))
    if key == "scaledtanh":
        return lambda x: (alpha if alpha is not None else 1.0) * torch.tanh(
            (beta if beta is not None else 1.0) * x)
    if key == "hardsigmoid":
        a = alpha if alpha is not None else 0.2
        b = beta if beta is not None else 0.5
        return lambda x: torch.clamp(a * x + b, 0, 1)
    if key == "elu":
        a = alpha if alpha is not None else 1.0
        return lambda x: torch.where(x > 0, x, a * torch.expm1(x))
    if key == "softsign":
        return lambda x: x / (1 + x.abs())
    if key == "softplus":
        return F.softplus
    raise ValueError(f"unknown RNN activation {name!r}")


def _activations(names, alphas, betas, defaults: list[str], directions: int) -> list[list[Act]]:
    names = list(names or defaults * directions)
    alphas = list(alphas or [])
    betas = list(betas or [])
    acts = []
    for i, name in enumerate(names):
        alpha = alphas[i] if i < len(alphas) else None
        beta = betas[i] if i < len(betas) else None
        acts.append(_activation(name, alpha, beta))
    per = len(defaults)
    return [acts[d * per:(d + 1) * per] for d in range(directions)]


def _prepare(x: torch.Tensor, layout: int, initial: list[torch.Tensor | None],
             directions: int, hidden: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    if layout:
        x = x.transpose(0, 1)
        initial = [None if h is None else h.transpose(0, 1) for h in initial]
    batch = x.shape[1]
    states = [
        h if h is not None else torch.zeros(directions, batch, hidden, dtype=x.dtype,
                                            device=x.device)
        for h in initial
    ]
    return x, states


def _run(step, x: torch.Tensor, lengths: torch.Tensor | None, reverse: bool,
         states: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Runs `step(x_t, *states) -> states` over time; entries past their length hold still."""
    seq, batch = x.shape[0], x.shape[1]
    lens = lengths.to(torch.int64).to(x.device) if lengths is not None else None
    outputs = torch.zeros(seq, batch, states[0].shape[-1], dtype=x.dtype, device=x.device)
    order = range(seq - 1, -1, -1) if reverse else range(seq)
    for t in order:
        if lens is None:
            states = step(x[t], *states)
            outputs[t] = states[0]
            continue
        if reverse:
            # each sequence is reversed within its own length
            src = (lens - 1 - (seq - 1 - t)).clamp(min=0)
            active = (seq - 1 - t) < lens
            xt = x[src, torch.arange(batch, device=x.device)]
        else:
            active = t < lens
            xt = x[t]
        new = step(xt, *states)
        mask = active.unsqueeze(-1)
        states = [torch.where(mask, n, s) for n, s in zip(new, states)]
        out_t = torch.where(mask, states[0], torch.zeros_like(states[0]))
        if reverse:
            index = torch.where(active, src, torch.full_like(src, seq - 1))
            for b in range(batch):
                if bool(active[b]):
                    outputs[int(index[b]), b] = out_t[b]
        else:
            outputs[t] = out_t
    return outputs, states


def _direction_flags(direction: str) -> list[bool]:
    return {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]


def _clip(x: torch.Tensor, clip: float | None) -> torch.Tensor:
    return x if clip is None else x.clamp(-clip, clip)


@register("LSTM", 7)
def lstm(
    x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None, *,
    activation_alpha=None, activation_beta=None, activations=None, clip=None,
    direction="forward", hidden_size=None, input_forget=0, layout=0, num_outputs=1,
):
    flags = _direction_flags(direction)
    hidden = r.shape[-1]
    x, (h0, c0) = _prepare(x, layout, [initial_h, initial_c], len(flags), hidden)
    acts = _activations(activations, activation_alpha, activation_beta,
                        ["Sigmoid", "Tanh", "Tanh"], len(flags))
    ys, hs, cs = [], [], []
    for d, reverse in enumerate(flags):
        wb = b[d].to(x.dtype) if b is not None else torch.zeros(8 * hidden, dtype=x.dtype,
                                                                device=x.device)
        bias = wb[:4 * hidden] + wb[4 * hidden:]
        peep = p[d] if p is not None else None
        f_act, g_act, h_act = acts[d]
        wd, rd = w[d], r[d]

        def step(xt, h, c, wd=wd, rd=rd, bias=bias, peep=peep, f_act=f_act, g_act=g_act,
                 h_act=h_act):
            gates = xt @ wd.T + h @ rd.T + bias
            i, o, f, g = gates.chunk(4, dim=-1)
            if peep is not None:
                pi, po, pf = peep.chunk(3)
                i, f = i + pi * c, f + pf * c
            i = f_act(_clip(i, clip))
            f = (1 - i) if input_forget else f_act(_clip(f, clip))
            c_new = f * c + i * g_act(_clip(g, clip))
            if peep is not None:
                o = o + po * c_new
            o = f_act(_clip(o, clip))
            return [o * h_act(c_new), c_new]

        y, (h, c) = _run(step, x, sequence_lens, reverse, [h0[d], c0[d]])
        ys.append(y)
        hs.append(h)
        cs.append(c)
    return _outputs(ys, [hs, cs], layout, num_outputs)


def _outputs(ys, finals, layout: int, num_outputs: int):
    y = torch.stack(ys, dim=1)  # [seq, dirs, batch, hidden]
    states = [torch.stack(f) for f in finals]
    if layout:
        y = y.permute(2, 0, 1, 3)
        states = [s.transpose(0, 1) for s in states]
    results = (y, *states)
    return results[:num_outputs] if num_outputs > 1 else results[0]


@register("GRU", 7)
def gru(
    x, w, r, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None,
    activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None,
    layout=0, linear_before_reset=0, num_outputs=1,
):
    flags = _direction_flags(direction)
    hidden = r.shape[-1]
    x, (h0,) = _prepare(x, layout, [initial_h], len(flags), hidden)
    acts = _activations(activations, activation_alpha, activation_beta,
                        ["Sigmoid", "Tanh"], len(flags))
    ys, hs = [], []
    for d, reverse in enumerate(flags):
        wb = b[d].to(x.dtype) if b is not None else torch.zeros(6 * hidden, dtype=x.dtype,
                                                                device=x.device)
        w_bias, r_bias = wb[:3 * hidden], wb[3 * hidden:]
        f_act, g_act = acts[d]
        wd, rd = w[d], r[d]

        def step(xt, h, wd=wd, rd=rd, w_bias=w_bias, r_bias=r_bias, f_act=f_act, g_act=g_act):
            xz, xr, xh = (xt @ wd.T + w_bias).chunk(3, dim=-1)
            rz, rr, rh = rd.chunk(3, dim=0)
            bz, br, bh = r_bias.chunk(3)
            z = f_act(_clip(xz + h @ rz.T + bz, clip))
            rt = f_act(_clip(xr + h @ rr.T + br, clip))
            if linear_before_reset:
                hh = g_act(_clip(xh + rt * (h @ rh.T + bh), clip))
            else:
                hh = g_act(_clip(xh + (rt * h) @ rh.T + bh, clip))
            return [(1 - z) * hh + z * h]

        y, (h,) = _run(step, x, sequence_lens, reverse, [h0[d]])
        ys.append(y)
        hs.append(h)
    return _outputs(ys, [hs], layout, num_outputs)


@register("RNN", 7)
def rnn(
    x, w, r, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None,
    activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None,
    layout=0, num_outputs=1,
):
    flags = _direction_flags(direction)
    hidden = r.shape[-1]
    x, (h0,) = _prepare(x, layout, [initial_h], len(flags), hidden)
    acts = _activations(activations, activation_alpha, activation_beta, ["Tanh"], len(flags))
    ys, hs = [], []
    for d, reverse in enumerate(flags):
        wb = b[d].to(x.dtype) if b is not None else torch.zeros(2 * hidden, dtype=x.dtype,
                                                                device=x.device)
        bias = wb[:hidden] + wb[hidden:]
        (f_act,) = acts[d]
        wd, rd = w[d], r[d]

        def step(xt, h, wd=wd, rd=rd, bias=bias, f_act=f_act):
            return [f_act(_clip(xt @ wd.T + h @ rd.T + bias, clip))]

        y, (h,) = _run(step, x, sequence_lens, reverse, [h0[d]])
        ys.append(y)
        hs.append(h)
    return _outputs(ys, [hs], layout, num_outputs)
