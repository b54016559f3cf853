"""kiln's AVX-512 kernels (kiln/kernels/native/) against torch in float64: the softmax on rows
of every length around the 16-lane step, with masked (-inf), fully masked and NaN entries;
SiLU over dense buffers in both memory orders, with extreme and NaN values; and the
loader's answer where a kernel cannot be built."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.kernels import LayerSpec, Target, get_tactic, native
from kiln.kernels.native import silu as native_silu
from kiln.kernels.native import softmax as native_softmax

pytestmark = pytest.mark.skipif(native_softmax.in_place() is None or native_silu.in_place()
                                is None, reason="no C compiler or no AVX-512 here")


@pytest.mark.parametrize("shape", [(1, 1), (3, 15), (4, 16), (2, 17), (6, 187, 187),
                                   (2, 5, 300)], ids=str)
@pytest.mark.parametrize("spread", [0.1, 8.0, 80.0])
def test_matches_a_float64_softmax(shape, spread):
    rng = np.random.default_rng(sum(shape))
    x = torch.from_numpy((rng.standard_normal(shape) * spread).astype(np.float32))
    want = torch.softmax(x.double(), dim=-1)
    got = native_softmax.in_place()(x)
    assert got.data_ptr() == x.data_ptr()  # in place
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=1e-7)


def test_masked_nan_and_empty_rows_as_torch_gives_them():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((5, 37)).astype(np.float32))
    x[0, :] = float("-inf")  # every key masked: NaN, as torch's softmax
    x[1, 3:30] = float("-inf")  # masked keys: exactly 0
    x[2, 20] = float("nan")  # NaN spreads over its row
    x[3, 36] = 1e30  # one huge score takes everything
    want = torch.softmax(x.double(), dim=-1)
    got = native_softmax.in_place()(x.clone())
    assert torch.equal(got.isnan(), want.isnan()) and got[0].isnan().all()
    assert not got[1, 3:30].any()
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=1e-7, equal_nan=True)


def test_other_tensors_go_to_torch():
    """Strided views, float64 and empty tensors take torch's softmax, a new tensor."""
    softmax = native_softmax.in_place()
    x = torch.randn(8, 6)
    for other in (x.t(), x.double(), torch.empty(0, 4)):
        got = softmax(other)
        torch.testing.assert_close(got, torch.softmax(other, dim=-1))
    assert torch.equal(x, x.clone())


@pytest.mark.parametrize("shape", [(7,), (16,), (2, 3, 5, 17), (1, 32, 20, 20)], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_silu_matches_a_float64_silu(shape, channels_last):
    rng = np.random.default_rng(sum(shape))
    x = torch.from_numpy((rng.standard_normal(shape) * 6).astype(np.float32))
    x.view(-1)[:4] = torch.tensor([-200.0, 200.0, -90.0, 0.0])[: x.numel()]
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    want = torch.nn.functional.silu(x.double())
    got = native_silu.in_place()(x)
    assert got.data_ptr() == x.data_ptr()
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=1e-30)


def test_silu_keeps_nan_and_leaves_strided_views_to_torch():
    x = torch.randn(6, 10)
    x[2, 3] = float("nan")
    want = torch.nn.functional.silu(x.double())
    got = native_silu.in_place()(x.clone())
    assert torch.equal(got.isnan(), want.isnan())
    y = x.clone()
    view = y[:, ::2]  # every other column: not dense, so torch's silu, in place
    got = native_silu.in_place()(view)
    torch.testing.assert_close(got, torch.nn.functional.silu(x[:, ::2]), equal_nan=True)
    torch.testing.assert_close(y[:, ::2], got, equal_nan=True)


@pytest.mark.parametrize("env", [{"CC": "/nonexistent/cc"}, {"KILN_NATIVE": "0"}])
def test_off_without_a_compiler_or_when_asked(env, tmp_path, monkeypatch):
    """No library, no tactic; and nothing left half-built in the cache folder."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    native.library.cache_clear()
    try:
        assert native.library("softmax") is None and native.library("silu") is None
        assert native_softmax.in_place() is None and native_silu.in_place() is None
        spec = LayerSpec("attn", "Attention", "kiln", 1, ["q", "k", "v"], ["y"], {})
        target = Target(torch.device("cpu"), "fp32")
        assert not get_tactic("attention-explicit-native").supports(spec, target)
        assert not any(tmp_path.rglob("*.so*"))
    finally:
        native.library.cache_clear()


def test_built_once_into_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    native.library.cache_clear()
    try:
        assert native.library("softmax") is not None
        built = list((tmp_path / "native").glob("softmax-*.so"))
        assert len(built) == 1
        stamp = built[0].stat().st_mtime_ns
        native.library.cache_clear()
        assert native.library("softmax") is not None  # loaded, not compiled again
        assert built[0].stat().st_mtime_ns == stamp
    finally:
        native.library.cache_clear()


def test_built_without_its_extra_flags_where_the_compiler_refuses_them(tmp_path, monkeypatch):
    """The GEMM asks for OpenMP; a compiler that refuses a kernel's extra flags builds it
    without them (and it runs on one thread) rather than turning it off."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(native.EXTRA_FLAGS, "softmax", ("-fno-such-flag-anywhere",))
    native.library.cache_clear()
    try:
        assert native.library("softmax") is not None
        assert len(list((tmp_path / "native").glob("softmax-*.so"))) == 1
        x = torch.randn(3, 20)
        torch.testing.assert_close(native_softmax.into_new()(x), torch.softmax(x, -1))
    finally:
        native.library.cache_clear()


def test_engines_that_chose_a_native_tactic_run_without_it(monkeypatch):
    """A plan made where the kernels build, bound where they cannot: each tactic binds to
    torch's kernel and gives the same values."""
    from kiln.kernels.native import conv_depthwise  # noqa: F401  (registers the tactics)

    rng = np.random.default_rng(11)
    cpu = torch.device("cpu")
    target = Target(cpu, "fp32")
    conv = LayerSpec("conv", "FusedConv", "kiln", 1, ["x", "w", "b", None], ["y"],
                     {"group": 6, "pads": [1, 1, 1, 1], "activation": "SiLU"},
                     constant_inputs={1: rng.standard_normal((6, 1, 3, 3)).astype(np.float32),
                                      2: rng.standard_normal(6).astype(np.float32)},
                     input_dtypes=["fp32"])
    attention = LayerSpec("attn", "Attention", "kiln", 1, ["q", "k", "v"], ["y"], {})
    x = torch.from_numpy(rng.standard_normal((2, 6, 7, 9)).astype(np.float32))
    q, k, v = (torch.from_numpy(rng.standard_normal((1, 2, 5, 4)).astype(np.float32))
               for _ in range(3))
    cases = [("conv-depthwise-native", conv, (x,)),
             ("conv-onednn-native-silu", conv, (x.contiguous(memory_format=torch.channels_last),)),
             ("attention-explicit-native", attention, (q, k, v))]
    for name, spec, args in cases:
        tactic = get_tactic(name)
        assert tactic.supports(spec, target)
        tensors = tactic.prepare(spec, target)
        want = tactic.bind(spec, tensors, cpu)(*[a.clone() for a in args])
        monkeypatch.setenv("KILN_NATIVE", "0")
        native.library.cache_clear()
        try:
            got = tactic.bind(spec, tensors, cpu)(*[a.clone() for a in args])
        finally:
            monkeypatch.delenv("KILN_NATIVE")
            native.library.cache_clear()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _softmax_layer(axis, shape, opset=13, dtype="fp32"):
    attrs = {} if axis is None else {"axis": axis}
    return LayerSpec("sm", "Softmax", "", opset, ["x"], ["y"], attrs, input_shapes=[shape],
                     input_dtypes=[dtype])


@pytest.mark.parametrize("shape", [(1, 98, 248), (3, 17), (2, 4, 1)], ids=str)
def test_softmax_layer_into_a_new_tensor(shape):
    """softmax-native leaves its input as it was (other layers may read it)."""
    rng = np.random.default_rng(len(shape) * 7 + shape[-1])
    x = torch.from_numpy((rng.standard_normal(shape) * 4).astype(np.float32))
    x[0, ..., 0] = float("-inf")  # a masked entry gives exactly 0
    before = x.clone()
    cpu = Target(torch.device("cpu"), "fp32")
    spec = _softmax_layer(-1, shape)
    tactic = get_tactic("softmax-native")
    assert tactic.supports(spec, cpu)
    got = tactic.bind(spec, {}, cpu.device)(x)
    assert torch.equal(x, before) and got.data_ptr() != x.data_ptr()
    torch.testing.assert_close(got.double(), torch.softmax(x.double(), dim=-1), rtol=2e-6,
                               atol=1e-7, equal_nan=True)  # a row of one -inf: NaN
    # a permuted view is not dense: torch's softmax along the same last axis
    view = x.transpose(0, -1)
    torch.testing.assert_close(tactic.bind(spec, {}, cpu.device)(view),
                               torch.softmax(view, dim=-1), equal_nan=True)


@pytest.mark.parametrize("axis,shape,opset,dtype,device,offered", [
    (None, (2, 5), 13, "fp32", "cpu", True),  # opset 13's default: the last axis
    (None, (2, 5), 11, "fp32", "cpu", True),  # opset 11's default 1 is the last of two
    (None, (2, 5, 3), 11, "fp32", "cpu", False),  # ... but not of three
    (2, (2, 5, 3), 13, "fp32", "cpu", True),
    (1, (2, 5, 3), 13, "fp32", "cpu", False),
    (-1, (2, 5), 13, "fp16", "cpu", False),
    (-1, (2, 5), 13, "fp32", "cuda", False),
])
def test_softmax_layer_offered_along_the_last_axis_only(axis, shape, opset, dtype, device,
                                                        offered):
    spec = _softmax_layer(axis, shape, opset, dtype)
    target = Target(torch.device(device), dtype)
    assert get_tactic("softmax-native").supports(spec, target) == offered


@pytest.mark.parametrize("mask_shape", [(2, 3, 1, 37), (2, 1, 1, 37), (1, 1, 1, 37),
                                        (2, 3, 5, 37), (37,), (1, 3, 1, 37)], ids=str)
def test_masked_softmax_adds_the_mask_as_torch_would(mask_shape):
    """Masks that broadcast over the query rows go into the kernel's passes; the others
    ([.., S, n] per row, fewer dims, or broadcast inside the leading dims) are added first;
    the results alike, -inf keys 0 and a fully masked row NaN."""
    rng = np.random.default_rng(len(mask_shape) + mask_shape[0])
    x = torch.from_numpy((rng.standard_normal((2, 3, 5, 37)) * 3).astype(np.float32))
    mask = torch.from_numpy(np.where(rng.random(mask_shape) < 0.3, -np.inf,
                                     rng.standard_normal(mask_shape)).astype(np.float32))
    mask[..., :2] = 0.0
    if len(mask_shape) == 4 and mask_shape[0] == 2:
        mask[1] = float("-inf")  # every key of the second sample masked
    want = torch.softmax(x.double() + mask.double(), dim=-1)
    got = native_softmax.masked_in_place()(x.clone(), mask)
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=1e-7, equal_nan=True)
