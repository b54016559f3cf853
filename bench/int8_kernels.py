"""kiln's INT8 Triton kernels against FP16 cuDNN/cuBLAS and torch._int_mm on single layers of
ResNet-50's shapes (batch 64), one process, each call timed as a CUDA graph replays it. It
prints TOPS and the ratio to FP16 per layer and tile, to tell kernel speed from engine
overheads; the TMA convolution's rows also print their largest difference from the
gathering kernel's output (in output quantization steps: 0 or 1 expected).

    PYTHONPATH=. python bench/int8_kernels.py
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F

from kiln.kernels.triton import _int8_kernels as k
from kiln.kernels.triton import _int8_s2d as s2d
from kiln.kernels.triton import _int8_stationary as stationary
from kiln.kernels.triton import _int8_tma as tma
from kiln.kernels.triton._int8_gluon import GLUON_CONFIGS, qgemm_gluon
from kiln.kernels.triton.int8 import (
    CONV_CONFIGS,
    CONV_LEVELS,
    GEMM_CONFIGS,
    GEMM_LEVELS,
    TMA_CONFIGS,
    TMA_STORE_CONFIGS,
)
from kiln.kernels.triton.int8_s2d import MAX_CHANNELS, S2D_CONFIGS
from kiln.runtime.cuda_graphs import replayed_ms

# (name, batch, C, H, W, OC, kernel, stride)
CONVS = [("7x7 c3 224 s2 stem", 64, 3, 224, 224, 64, 7, 2),
         ("3x3 c64 56", 64, 64, 56, 56, 64, 3, 1), ("3x3 c128 28", 64, 128, 28, 28, 128, 3, 1),
         ("3x3 c256 14", 64, 256, 14, 14, 256, 3, 1), ("3x3 c512 7", 64, 512, 7, 7, 512, 3, 1),
         ("3x3 c128 56 s2", 64, 128, 56, 56, 128, 3, 2),
         ("1x1 64->256 @56", 64, 64, 56, 56, 256, 1, 1),
         ("1x1 64->256 @56 +res", 64, 64, 56, 56, 256, 1, 1),  # int8 residual, as in-engine
         ("1x1 256->64 @56", 64, 256, 56, 56, 64, 1, 1),
         ("1x1 128->512 @28 +res", 64, 128, 28, 28, 512, 1, 1),
         ("1x1 1024->256 @14", 64, 1024, 14, 14, 256, 1, 1),
         ("1x1 512->2048 @7", 64, 512, 7, 7, 2048, 1, 1)]
GEMMS = [("1x1 64->256 @56", 64 * 56 * 56, 64, 256), ("1x1 1024->256 @14", 64 * 14 * 14, 1024, 256),
         ("1x1 512->2048 @7", 64 * 7 * 7, 512, 2048),
         # BERT-base at batch 32, sequence 128: (name, M, K, N)
         ("bert qkv", 4096, 768, 2304), ("bert out", 4096, 768, 768),
         ("bert fc1", 4096, 768, 3072), ("bert fc2", 4096, 3072, 768)]


def time_ms(fn, *args) -> float:
    """Milliseconds per call of fn(*args) as a CUDA graph replays it (as engines run), so
    the host's launch cost, large for a Triton kernel called from Python, is not counted."""
    ms = replayed_ms(lambda: fn(*args), reps=100, rounds=5)
    if ms is None:
        raise RuntimeError("not capturable in a CUDA graph")
    return ms


def _time_row(rows: list, name: str, kernel: str, ops: float, fp16: float, fn, *args) -> None:
    try:
        ms = time_ms(fn, *args)
    except Exception as exc:  # a tile that does not compile is a row, not a crash
        rows.append((name, kernel, float("nan"), 0, 0))
        print(f"{name} {kernel}: {type(exc).__name__}: {str(exc)[:160]}")
        return
    rows.append((name, kernel, ms, ops / ms / 1e9, fp16 / ms))
    print(f"{name:20} {kernel:40} {ms:8.3f} {fp16 / ms:9.2f}", flush=True)  # as they come


def _conv_relu(x, w, stride, pad):
    return F.relu(F.conv2d(x, w, None, stride, pad))


def _linear_relu(a, w):
    return F.relu(F.linear(a, w))


def _scaled_mm(a, b, one):
    return torch._scaled_mm(a, b, one, one, out_dtype=torch.half)


def _ints(shape, device="cuda"):
    return torch.randint(-128, 128, shape, dtype=torch.int8, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="",
                        help="comma list of layer name prefixes ('_' for a space)")
    parser.add_argument("--tiles", default="",
                        help="comma list of TMA tiles (t4p: t4 persistent; and 'fp8')")
    parser.add_argument("--configs", default="",
                        help="more TMA tiles, BMxBNxBKwWARPSsSTAGES each: 128x256x64w8s2,...")
    parser.add_argument("--stationary", default="",
                        help="stationary-weight GEMM tiles for K <= 256 (1x1 layers, GEMMs), "
                             "BMxBNxTILESwWARPSsSTAGES[t] each (t: TMA residual and "
                             "output): 128x128x4w8s2,...")
    parser.add_argument("--tma-only", action="store_true", help="no gathering kernel, GEMMs")
    parser.add_argument("--width-first", action="store_true",
                        help="each TMA convolution tile also with the spatial tile chosen "
                             "width first (the rule before the fewest computed rows)")
    parser.add_argument("--epilogues", action="store_true",
                        help="FP8 BERT GEMMs with each epilogue, and the quantize steps")
    parser.add_argument("--pool", action="store_true",
                        help="also ResNet-50's 3x3/2 max-pool at batch 64, int8 and fp16")
    parser.add_argument("--gluon", default="",
                        help="GEMMs: also these tiles of the Gluon INT8 GEMM (an MMA kept in "
                             "flight; GLUON_CONFIGS keys, or 'all'), each with its largest "
                             "difference from the t3 kernel's output")
    parser.add_argument("--patches", action="store_true",
                        help="also ViT-B/16's patch embedding at batch 64 (16x16/16, 3->768): "
                             "cuDNN and one GEMM in fp16, the gathering kernel and the "
                             "patch GEMM tactics in int8")
    parser.add_argument("--shortcut", action="store_true",
                        help="also ResNet-50's bottleneck tails with their projections "
                             "(kiln.QConvShortcut): fused, and as two layers")
    parser.add_argument("--attention", action="store_true",
                        help="only BERT-base's attention at batch 32 (kiln.QAttention): each "
                             "INT8 Triton tactic against torch's SDPA in FP16")
    args = parser.parse_args()
    if args.epilogues:
        return epilogues()
    if args.attention:
        return attention()
    layers = [p.replace("_", " ") for p in args.layers.split(",") if p]
    extra = {spec: _config(spec) for spec in args.configs.split(",") if spec}
    held = {spec: _config(spec) for spec in args.stationary.split(",") if spec}
    tma_tiles = {**TMA_CONFIGS, **TMA_STORE_CONFIGS, **extra}
    tiles = (set(args.tiles.split(",")) if args.tiles else set(tma_tiles) | {"fp8"}) | set(extra)
    rows = []
    epi = {"out_scale": 0.05, "out_inv_scale": 20.0, "out_type": "int8", "activation": "Relu"}
    for name, b, c, h, w, oc, ks, s in CONVS:
        if layers and not any(name.startswith(p) for p in layers):
            continue
        x = _ints((b, c, h, w)).contiguous(memory_format=torch.channels_last)
        wt = _ints((oc, ks * ks * c))
        # outputs of a few units over the 0.05 step, so the comparison is not all saturation
        scales = torch.rand(oc, device="cuda") * 3 / (5500 * (c * ks * ks) ** 0.5)
        bias = torch.rand(oc, device="cuda")
        ops = 2 * b * h * w * oc * c * ks * ks / s / s
        xf = torch.randn(b, c, h, w, device="cuda", dtype=torch.half).contiguous(
            memory_format=torch.channels_last)
        wf = torch.randn(oc, c, ks, ks, device="cuda", dtype=torch.half).contiguous(
            memory_format=torch.channels_last)
        fp16 = time_ms(_conv_relu, xf, wf, s, ks // 2)
        rows.append((name, "cudnn fp16", fp16, ops / fp16 / 1e9, 1.0))
        conv = ((ks, ks), (s, s), (ks // 2,) * 4, (1, 1), scales, bias)
        residual, layer_epi = None, epi
        if name.endswith("+res"):
            residual = _ints((b, oc, h // s, w // s)).contiguous(
                memory_format=torch.channels_last)
            layer_epi = {**epi, "residual_scale": 0.05, "residual_zero_point": 0}
        reference = k.qconv2d(x, wt, *conv, None, 0, layer_epi, CONV_CONFIGS["a"],
                              residual).float()
        for key, config in CONV_CONFIGS.items():
            if CONV_LEVELS[key] > 2 or args.tma_only:  # the tiles the default build level times
                continue
            _time_row(rows, name, f"gather {key} {config}", ops, fp16, k.qconv2d,
                      x, wt, *conv, None, 0, layer_epi, config, residual)
        for key, config in tma_tiles.items():
            if key not in tiles or not tma.fits(c, h, w, (ks, ks), (s, s), config[2]):
                continue
            try:
                diff = (tma.qconv2d_tma(x, wt, *conv, layer_epi, config, residual).float()
                        - reference)
            except Exception as exc:  # a tile that does not compile is a row, not a crash
                print(f"{name} tma {key}: {type(exc).__name__}: {str(exc)[:160]}")
                continue
            _time_row(rows, name, f"tma {key} {config} d{diff.abs().max().item():.0f}", ops,
                      fp16, tma.qconv2d_tma, x, wt, *conv, layer_epi, config, residual)
            if args.width_first and (ks > 1 or s > 1):
                with _width_first():
                    _time_row(rows, name, f"tma {key} width first", ops, fp16,
                              tma.qconv2d_tma, x, wt, *conv, layer_epi, config, residual)
            if f"{key}p" in tiles and ks == s == 1:  # the persistent 2-D GEMM
                diff = (tma.qconv2d_tma(x, wt, *conv, layer_epi, config, residual,
                                        persistent=True).float() - reference)
                _time_row(rows, name, f"tma {key} persistent d{diff.abs().max().item():.0f}",
                          ops, fp16, tma.qconv2d_tma, x, wt, *conv, layer_epi, config,
                          residual, True)
        if ks == s == 1 and stationary.fits(c):
            for spec, config in held.items():
                diff = (stationary.qconv1x1_stationary(x, wt, scales, bias, layer_epi, config,
                                                       residual).float() - reference)
                _time_row(rows, name, f"stationary {spec} d{diff.abs().max().item():.0f}", ops,
                          fp16, stationary.qconv1x1_stationary, x, wt, scales, bias, layer_epi,
                          config, residual)
        if s == 2 and ks > 1 and s2d.real_channels(c, ks) <= MAX_CHANNELS:
            _s2d_rows(rows, name, x, wt, conv, layer_epi, ops, fp16, reference,
                      args.width_first)
        if "fp8" not in tiles or residual is not None:
            continue
        fp8 = (x.float() / 16).to(torch.float8_e4m3fn), (wt.float() / 16).to(torch.float8_e4m3fn)
        config = TMA_CONFIGS["t1" if c < 128 else "t3"]
        _time_row(rows, name, f"tma fp8 {config}", ops, fp16, tma.qconv2d_tma, *fp8, *conv,
                  {**epi, "out_type": "fp8e4m3"}, config)
    for name, m, kk, n in GEMMS:
        if layers and not any(name.startswith(p) for p in layers):
            continue
        a, wt = _ints((m, kk)), _ints((n, kk))
        scales, bias = torch.rand(n, device="cuda"), torch.rand(n, device="cuda")
        ops = 2 * m * n * kk
        af = torch.randn(m, kk, device="cuda", dtype=torch.half)
        wf = torch.randn(n, kk, device="cuda", dtype=torch.half)
        fp16 = time_ms(_linear_relu, af, wf)
        rows.append((name, "cublas fp16", fp16, ops / fp16 / 1e9, 1.0))
        ms = time_ms(F.linear, af, wf)
        rows.append((name, "cublas fp16 (no epilogue)", ms, ops / ms / 1e9, fp16 / ms))
        ms = time_ms(torch._int_mm, a, wt.t())
        rows.append((name, "torch._int_mm (no epilogue)", ms, ops / ms / 1e9, fp16 / ms))
        for key, config in GEMM_CONFIGS.items():
            if GEMM_LEVELS[key] > 2 or args.tma_only:
                continue
            ms = time_ms(k.qgemm, a, wt, scales, bias, None, 0, epi, config)
            rows.append((name, f"triton {key} {config}", ms, ops / ms / 1e9, fp16 / ms))
        for key, config in {**TMA_CONFIGS, **TMA_STORE_CONFIGS, **extra}.items():
            if key in tiles and kk % config[2] == 0:
                _time_row(rows, name, f"tma {key} {config}", ops, fp16, tma.qgemm_tma, a, wt,
                          scales, bias, epi, config)
            if f"{key}p" in tiles and kk % config[2] == 0:  # one program per SM
                _time_row(rows, name, f"tma {key} persistent", ops, fp16, tma.qgemm_tma, a,
                          wt, scales, bias, epi, config, None, True)
        gluon = {key: config for key, config in GLUON_CONFIGS.items()
                 if args.gluon == "all" or key in args.gluon.split(",")}
        want = tma.qgemm_tma(a, wt, scales, bias, epi, TMA_CONFIGS["t3"]).int() if gluon \
            else None  # the reference output, once per GEMM
        for key, config in gluon.items():
            label = f"gluon {key} {config}"
            try:  # a tile that does not compile or run is a row, not a crash
                got = qgemm_gluon(a, wt, scales, bias, epi, config).int()
                label += f" d{(got - want).abs().max().item()}"
            except Exception as exc:
                print(f"{name} {label}: {type(exc).__name__}: {str(exc)[:160]}")
            _time_row(rows, name, label, ops, fp16, qgemm_gluon, a, wt, scales, bias, epi,
                      config)
        for spec, config in held.items() if stationary.fits(kk) else ():
            _time_row(rows, name, f"stationary {spec}", ops, fp16, stationary.qgemm_stationary,
                      a, wt, scales, bias, epi, config)
        if "fp8" not in tiles:
            continue
        a8, w8 = (a.float() / 16).to(torch.float8_e4m3fn), (wt.float() / 16).to(torch.float8_e4m3fn)
        one = torch.ones((), device="cuda")
        _time_row(rows, name, "torch._scaled_mm fp8 (no epilogue)", ops, fp16, _scaled_mm, a8,
                  w8.t(), one)
        _time_row(rows, name, f"tma fp8 t4 {TMA_CONFIGS['t4']}", ops, fp16, tma.qgemm_tma, a8,
                  w8, scales, bias, {**epi, "out_type": "fp8e4m3"}, TMA_CONFIGS["t4"])
    if args.pool:
        _pool_rows(rows)
    if args.patches:
        _patches_rows(rows)
    if args.shortcut:
        _shortcut_rows(rows)
    print_table(rows)


# (name, batch, C, H, W, projection C, stride, N): the first blocks of stages 1 and 2
SHORTCUTS = [("tail+proj 64,64->256 @56", 64, 64, 56, 56, 64, 1, 256),
             ("tail+proj 128,256s2->512 @28", 64, 128, 28, 28, 256, 2, 512)]


def _shortcut_rows(rows: list) -> None:
    """The tail (1x1, int8 residual, ReLU, int8 out) with its projection (1x1, int8 out):
    the fused kernel's tiles against the two layers each on the stationary kernel (the
    strided projection on the t1 TMA convolution), and cuDNN FP16 (two convolutions, the
    add and ReLU)."""
    for name, b, c, h, w, sc, s, n in SHORTCUTS:
        _shortcut_row(rows, name, _ints((b, c, h, w)), _ints((b, sc, h * s, w * s)),
                      _ints((n, c)), _ints((n, sc)), s)


def _shortcut_row(rows: list, name: str, x, sx, wt, swt, s: int) -> None:
    from kiln.kernels.triton import _int8_shortcut as shortcut
    from kiln.kernels.triton.int8_shortcut import SHORTCUT_CONFIGS
    from kiln.kernels.triton.int8_stationary import STATIONARY_CONFIGS

    epi = {"out_scale": 0.05, "out_inv_scale": 20.0, "out_type": "int8", "activation": "Relu",
           "residual_scale": 0.05, "residual_zero_point": 0}
    s_epi = {"out_scale": 0.05, "out_inv_scale": 20.0, "out_type": "int8"}
    x, sx = (t.contiguous(memory_format=torch.channels_last) for t in (x, sx))
    n, (b, c, h, w), sc = wt.shape[0], x.shape, sx.shape[1]
    scales, s_scales = (torch.rand(n, device="cuda") * 3 / (5500 * k_ ** 0.5) for k_ in (c, sc))
    bias, s_bias = torch.rand(n, device="cuda"), torch.rand(n, device="cuda")
    ops = 2 * b * h * w * n * (c + sc)
    xf, sxf = (t.half() for t in (x, sx))
    wf, swf = (t.half()[:, :, None, None] for t in (wt, swt))
    fp16 = time_ms(lambda: F.relu(F.conv2d(xf, wf) + F.conv2d(sxf, swf, stride=s)))
    config = STATIONARY_CONFIGS["128x64x8"]

    def split():
        if s == 1:
            r = stationary.qconv1x1_stationary(sx, swt, s_scales, s_bias, s_epi, config)
        else:
            r = tma.qconv2d_tma(sx, swt, (1, 1), (s, s), (0, 0, 0, 0), (1, 1), s_scales,
                                s_bias, s_epi, TMA_CONFIGS["t1"])
        return stationary.qconv1x1_stationary(x, wt, scales, bias, epi, config, r)

    want = split()
    _time_row(rows, name, "two layers (stationary 128x64x8)", ops, fp16, split)
    for key, tile in SHORTCUT_CONFIGS.items():
        args = (x, wt, scales, bias, epi, sx, swt, s_scales, s_bias, s_epi, s, tile)
        diff = int((shortcut.qconv_shortcut(*args).int() - want.int()).abs().max())
        _time_row(rows, name, f"fused {key} (max diff {diff})", ops, fp16,
                  shortcut.qconv_shortcut, *args)


def _patches_rows(rows: list) -> None:
    """ViT-B/16's patch embedding (a 16x16 stride-16 convolution of 3 channels, 224x224,
    batch 64): cuDNN against the windows reordered into rows and one GEMM (conv-patches)
    in fp16; in int8 the gathering kernel against the patch tactics' TMA GEMM
    (int8_patches), each with its largest difference from the gathering kernel's output,
    and the reordering copy alone."""
    from kiln.kernels.torch.conv_patches import patch_rows

    name, b, oc, p = "vit patches 16/16", 64, 768, 16
    ops = 2 * b * (224 // p) ** 2 * oc * 3 * p * p
    xf = torch.randn(b, 3, 224, 224, device="cuda", dtype=torch.half)
    wf = torch.randn(oc, 3, p, p, device="cuda", dtype=torch.half)
    fp16 = time_ms(F.conv2d, xf.contiguous(memory_format=torch.channels_last),
                   wf.contiguous(memory_format=torch.channels_last), None, p)
    rows.append((name, "cudnn fp16 (channels-last)", fp16, ops / fp16 / 1e9, 1.0))
    _time_row(rows, name, "cudnn fp16 (nchw)", ops, fp16, F.conv2d, xf, wf, None, p)
    _time_row(rows, name, "fp16 rows + one GEMM", ops, fp16,
              lambda: F.linear(patch_rows(xf, p, p), wf.reshape(oc, -1)))
    x, w = _ints((b, 3, 224, 224)), _ints((oc, 3, p, p))
    scales = torch.rand(oc, device="cuda") * 3 / (5500 * (3 * p * p) ** 0.5)
    bias = torch.rand(oc, device="cuda")
    epi = {"out_scale": 0.05, "out_inv_scale": 20.0, "out_type": "int8"}
    conv = ((p, p), (p, p), (0, 0, 0, 0), (1, 1), scales, bias)
    taps = w.permute(0, 2, 3, 1).reshape(oc, -1).contiguous()
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    want = k.qconv2d(x_nhwc, taps, *conv, None, 0, epi, CONV_CONFIGS["a"]).float()
    _time_row(rows, name, f"int8 gather a {CONV_CONFIGS['a']}", ops, fp16, k.qconv2d,
              x_nhwc, taps, *conv, None, 0, epi, CONV_CONFIGS["a"])
    _time_row(rows, name, "int8 rows alone", ops, fp16, patch_rows, x, p, p)
    flat = w.reshape(oc, -1)

    def patches(config):
        y = tma.qgemm_tma(patch_rows(x, p, p), flat, scales, bias, epi, config)
        return y.reshape(b, 224 // p, 224 // p, oc).permute(0, 3, 1, 2)

    for key in ("t3", "t4", "t6"):
        diff = (patches(TMA_CONFIGS[key]).float() - want).abs().max().item()
        _time_row(rows, name, f"int8 patches {key} d{diff:.0f}", ops, fp16, patches,
                  TMA_CONFIGS[key])


def _pool_rows(rows: list) -> None:
    """ResNet-50's max-pool after the stem (3x3, stride 2, pad 1 over 112x112x64): kiln's
    kernel on int8 and fp16, torch's (which also writes int64 indices) on fp16."""
    from kiln.kernels.triton.pool import POOL_CONFIGS, maxpool_nhwc

    xf = torch.randn(64, 64, 112, 112, device="cuda", dtype=torch.half).contiguous(
        memory_format=torch.channels_last)
    x8 = _ints(xf.shape).contiguous(memory_format=torch.channels_last)
    fp16 = time_ms(F.max_pool2d, xf, 3, 2, 1)
    rows.append(("maxpool 3x3/2 112", "torch fp16", fp16, 0.0, 1.0))
    for label, x in (("fp16", xf), ("int8", x8)):
        want = F.max_pool2d(x.float(), 3, 2, 1)
        for key, config in POOL_CONFIGS.items():
            got = maxpool_nhwc(x, [3, 3], [2, 2], [1, 1, 1, 1], False, config)
            assert torch.equal(got.float(), want), (label, key)
            _time_row(rows, "maxpool 3x3/2 112", f"kiln {label} {config}", 0.0, fp16,
                      maxpool_nhwc, x, [3, 3], [2, 2], [1, 1, 1, 1], False, config)


def _s2d_rows(rows: list, name: str, x, wt, conv: tuple, epi: dict, ops: float, fp16: float,
              reference, width_first: bool) -> None:
    """A stride-2 layer over few channels by space to depth (_int8_s2d), and the
    space-to-depth kernel alone."""
    (ks, _), _, pads, _, scales, bias = conv
    oc, c = wt.shape[0], x.shape[1]
    w = wt.reshape(oc, ks, ks, c).permute(0, 3, 1, 2)
    for key, config in S2D_CONFIGS.items():
        packed = s2d.pack_weights(w, config[2])
        diff = (s2d.qconv2d_s2d(x, packed, (ks, ks), pads, scales, bias, epi, config).float()
                - reference).abs().max().item()
        _time_row(rows, name, f"s2d {key} {config} d{diff:.0f}", ops, fp16, s2d.qconv2d_s2d,
                  x, packed, (ks, ks), pads, scales, bias, epi, config)
    for block_j in (64, 128):
        _time_row(rows, name, f"s2d space_to_depth alone, {block_j} columns", ops, fp16,
                  s2d.space_to_depth, x, (ks, ks), pads, 64, block_j)
    if width_first:
        with _width_first():
            config = S2D_CONFIGS["128x64"]
            _time_row(rows, name, "s2d 128x64 width first", ops, fp16, s2d.qconv2d_s2d, x,
                      s2d.pack_weights(w, config[2]), (ks, ks), pads, scales, bias, epi,
                      config)


@contextlib.contextmanager
def _width_first():
    """The TMA convolution with its spatial tile chosen as before the fewest computed rows:
    as wide as the output, then as high, then more images."""
    saved = tma.spatial_tile
    tma.spatial_tile = lambda block_m, oh, ow, *_: tma.width_first_tile(block_m, oh, ow)
    try:
        yield
    finally:
        tma.spatial_tile = saved


def _config(spec: str) -> tuple:
    """'128x256x64w8s2' -> (128, 256, 64, 8, 2); a trailing 't' adds True (the residual
    and output tiles by TMA: '64x64x8w4s3t')."""
    tma_io = spec.endswith("t")
    dims, rest = spec.removesuffix("t").split("w")
    warps, stages = rest.split("s")
    return (*(int(v) for v in dims.split("x")), int(warps), int(stages)) + (
        (True,) if tma_io else ())


def print_table(rows: list) -> None:
    print(f"\n{'layer':20} {'kernel':40} {'ms':>8} {'TOPS':>7} {'fp16/this':>9}")
    for name, kernel, ms, tops, ratio in rows:
        print(f"{name:20} {kernel:40} {ms:8.3f} {tops:7.1f} {ratio:9.2f}")


# (label, epilogue): what a BERT engine's FP8 layers ask of the kernel
EPILOGUES = [("fp16 out", {"out_dtype": "fp16"}),
             ("fp8 out", {"out_scale": 0.05, "out_inv_scale": 20.0, "out_type": "fp8e4m3"}),
             ("gelu fp16 out", {"out_dtype": "fp16", "activation": "GeluErf"}),
             ("gelu fp8 out", {"out_scale": 0.05, "out_inv_scale": 20.0,
                               "out_type": "fp8e4m3", "activation": "GeluErf"}),
             ("gelu-tanh fp8 out", {"out_scale": 0.05, "out_inv_scale": 20.0,
                                    "out_type": "fp8e4m3", "activation": "GeluTanh"})]


def epilogues() -> None:
    """Where an FP8 BERT layer's time goes: the Triton kernel per tile and epilogue,
    cuBLASLt with bias (and fast accumulation), and the Quantize steps between layers."""
    from kiln.kernels.triton import _int8_kernels as k8

    rows = []
    for name, m, kk, n in GEMMS[3:]:
        a8 = (torch.randn(m, kk, device="cuda") * 2).to(torch.float8_e4m3fn)
        w8 = (torch.randn(n, kk, device="cuda") / 8).to(torch.float8_e4m3fn)
        scales, bias = torch.rand(n, device="cuda") / 8, torch.rand(n, device="cuda")
        ops = 2 * m * n * kk
        af = torch.randn(m, kk, device="cuda", dtype=torch.half)
        wf = torch.randn(n, kk, device="cuda", dtype=torch.half)
        bf = bias.half()
        fp16 = time_ms(F.linear, af, wf, bf)
        rows.append((name, "cublas fp16 +bias", fp16, ops / fp16 / 1e9, 1.0))
        one = torch.ones((), device="cuda")
        for label, fast in (("", False), (" fast-accum", True)):
            _time_row(rows, name, f"_scaled_mm +bias{label}", ops, fp16, torch._scaled_mm, a8,
                      w8.t(), one, one, bf, None, torch.half, fast)
        for key in ("t1", "t4", "t6", "t7"):
            for label, epi in EPILOGUES:
                _time_row(rows, name, f"tma {key} {label}", ops, fp16, tma.qgemm_tma, a8, w8,
                          scales, bias, epi, TMA_CONFIGS[key])
    for m, n in ((4096, 768), (4096, 3072)):
        x = torch.randn(m, n, device="cuda", dtype=torch.half)
        ms = time_ms(k8.quantize, x, 0.05, 0, "fp8e4m3")
        rows.append((f"quantize {m}x{n}", "quantize-triton fp8", ms, 0, 0))
    print_table(rows)


def attention() -> None:
    """Each int8-triton-attention tactic bound as an engine binds it (q, k and v strided
    views of a QKV GEMM's [B, S, 3 * H * D] output, int8 output in 'bshd') against SDPA in
    FP16 on the same views, at two shapes: BERT-base at batch 32 (sequence 128, a padding
    mask of -10000 on the last 16 keys) and ViT-B/16 at batch 64 (197 tokens, no mask).
    Each row's label gives the kernel's largest difference from the reference op on the
    same GPU tensors, in output steps and dequantized (0, rarely 1 or 2 steps, expected:
    tests/quant/test_triton_int8_attention.py)."""
    rows: list = []
    for name, b, s, masked in (("bert attention", 32, 128, True),
                               ("vit attention", 64, 197, False)):
        _attention_rows(rows, name, b, 12, s, 64, masked)
    print_table(rows)


def _attention_rows(rows: list, name: str, b: int, h: int, s: int, d: int,
                    masked: bool) -> None:
    from kiln.kernels import LayerSpec, get_tactic
    from kiln.kernels.triton.int8_attention import ATTENTION_CONFIGS
    from kiln.ops.qattention import qattention

    ops = 4 * b * h * s * s * d
    qkv8 = _ints((b, s, 3 * h * d))
    q, k, v = (qkv8[..., i * h * d:(i + 1) * h * d].view(b, s, h, d) for i in range(3))
    mask = None
    if masked:
        mask = torch.zeros(b, 1, 1, s, device="cuda")
        mask[..., -16:] = -10000.0
    qkv = torch.randn(b, s, 3 * h * d, device="cuda", dtype=torch.half)
    qf, kf, vf = (qkv[..., i * h * d:(i + 1) * h * d].view(b, s, h, d).transpose(1, 2)
                  for i in range(3))
    fp16 = time_ms(F.scaled_dot_product_attention, qf, kf, vf,
                   mask.half() if masked else None)
    rows.append((name, "torch sdpa fp16", fp16, ops / fp16 / 1e9, 1.0))
    attrs = {"q_scale": 0.02, "k_scale": 0.02, "v_scale": 0.05, "q_layout": "bshd",
             "k_layout": "bshd", "v_layout": "bshd", "out_layout": "bshd", "out_scale": 0.06,
             "out_zero_point": 0, "out_type": "int8"}
    want = qattention(q, k, v, mask, **attrs).int()
    spec = LayerSpec("attention", "QAttention", "kiln", 1, ["q", "k", "v", "mask"], ["y"],
                     attrs, input_shapes=[(b, s, h, d)] * 3 + [(b, 1, 1, s)],
                     input_dtypes=["int8", "int8", "int8", "float32"])
    for key in ATTENTION_CONFIGS:
        tactic = get_tactic(f"int8-triton-attention-{key}")
        run = tactic.bind(spec, {}, torch.device("cuda"))
        try:
            diff = int((run(q, k, v, mask).int() - want).abs().max())
        except Exception as exc:  # a tile that does not compile is a row, not a crash
            print(f"{name} {tactic.name}: {type(exc).__name__}: {str(exc)[:160]}")
            continue
        label = f"{tactic.name} d{diff} ({diff * attrs['out_scale']:.2f})"  # steps, value
        _time_row(rows, name, label, ops, fp16, run, q, k, v, mask)
        if masked:  # what reading and adding the mask costs (a row of its own, not checked)
            _time_row(rows, name, f"{tactic.name} without the mask", ops, fp16, run, q, k, v)


if __name__ == "__main__":
    main()
