"""The native int8 kernels (edgerun/kernels/native/quant.c) against the numpy int8 kernels and the integer
oracle: the fused QInvertedResidual block, the 1x1 QLinearConv and QGemm. The arithmetic is exact integer
accumulation and the same float32 requantisation, so the outputs must be bit-equal, on every instruction-set
variant built here (the AVX-512 one runs the VNNI GEMM when the CPU has it and the centred weights fit int8,
the portable loop otherwise), and at 1 and 2 threads."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgerun import kernels
from edgerun.ir import Node
from edgerun.kernels import isa
from edgerun.kernels import native_quant as nq
from edgerun.kernels import steps_quant as sq
from edgerun.ops import quant as quant_ops

pytestmark = pytest.mark.skipif(not kernels.native_available(), reason="native kernels not built")

# every variant built and runnable here; only the forced one under EDGERUN_ISA (tools/sanitize.sh loops over them)
VARIANTS = ((os.environ[isa.ENV_VAR],) if os.environ.get(isa.ENV_VAR)
            else isa.runnable_variants() if kernels.native_available() else ())
EXAMPLES = settings(max_examples=int(os.environ.get("EDGERUN_QUANT_EXAMPLES", "40")), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _variant_module(name):
    import importlib
    return importlib.import_module(isa.module_name(name))


@pytest.fixture(params=VARIANTS)
def variant(request, monkeypatch):
    module = _variant_module(request.param)
    monkeypatch.setattr(nq, "_module", lambda: module)
    return request.param


def _q(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, size=shape).astype(dtype)


def _zero(rng, dtype):
    info = np.iinfo(dtype)
    return np.asarray(rng.integers(info.min, info.max + 1), dtype=dtype)


def _scratch(kernel, node, inputs, outputs):
    sizes = kernel.scratch_bytes(node, [None if v is None else v.shape for v in inputs], [o.shape for o in outputs])
    # filled with garbage: a kernel must not read scratch it did not write
    return {name: np.full(size // 4, np.nan, np.float32) for name, size in sizes.items()}


def _run(kernel, node, inputs, out_shape, out_dtype, constants=None):
    y = np.zeros(out_shape, out_dtype)
    kernel.prepare(node, constants or {})
    kernel.run(node, inputs, [y], _scratch(kernel, node, inputs, [y]))
    return y


# ---------------------------------------------------------------- the fused block
@st.composite
def blocks(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    expand = draw(st.sampled_from(["none", "1x1", "stem"]))
    cin = draw(st.integers(1, 12)) if expand != "none" else None
    hidden = draw(st.integers(1, 40))
    if expand == "none":
        cin = hidden
    dw_stride = draw(st.sampled_from([1, 2]))
    dw_kernel = draw(st.sampled_from([3, 3, 5]))
    cout = draw(st.integers(1, 24))
    height, width = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    x_dtype, h_dtype, d_dtype, p_dtype = (draw(st.sampled_from([np.int8, np.uint8])) for _ in range(4))
    x_float = expand == "stem" and draw(st.booleans())
    residual = expand != "stem" and cin == cout and dw_stride == 1 and not x_float and draw(st.booleans())
    weight_zero = draw(st.sampled_from(["zero", "small", "wide"]))   # wide: centred weights outside int8
    per_channel = draw(st.booleans())
    return dict(rng=rng, expand=expand, cin=cin, hidden=hidden, cout=cout, dw_stride=dw_stride,
                dw_kernel=dw_kernel, height=height, width=width, x_dtype=x_dtype, h_dtype=h_dtype, d_dtype=d_dtype,
                p_dtype=p_dtype, x_float=x_float, residual=residual, weight_zero=weight_zero,
                per_channel=per_channel, clamp=draw(st.booleans()))


def _weights(rng, case, shape):
    w = _q(rng, shape, np.int8)
    channels = shape[0]
    if case["weight_zero"] == "zero":
        zero = np.zeros(channels if case["per_channel"] else (), np.int8)
    else:
        bound = 3 if case["weight_zero"] == "small" else 100
        zero = rng.integers(-bound, bound + 1, size=channels if case["per_channel"] else ()).astype(np.int8)
    scale = (rng.uniform(0.001, 0.05, size=channels) if case["per_channel"] else rng.uniform(0.001, 0.05))
    return w, np.asarray(scale, np.float32), zero


def _stage(rng, case, shape, out_dtype):
    w, ws, wz = _weights(rng, case, shape)
    bias = rng.integers(-3000, 3000, size=shape[0]).astype(np.int32) if rng.random() < 0.8 else None
    return [w, ws, wz, np.float32(rng.uniform(0.02, 0.3)), _zero(rng, out_dtype), bias]


def _block_case(case):
    """(node, inputs, output shape, output dtype, constants) of a QInvertedResidual step."""
    rng = case["rng"]
    cin, hidden, cout = case["cin"], case["hidden"], case["cout"]
    attrs = {"dw_kernel": case["dw_kernel"], "dw_stride": case["dw_stride"], "dw_pads": [case["dw_kernel"] // 2] * 4,
             "residual": int(case["residual"])}
    h, w = case["height"], case["width"]
    if case["x_float"]:
        x = (rng.standard_normal((1, cin, h, w)) * 2).astype(np.float32)
        attrs["quantize_input"] = 1
    else:
        x = _q(rng, (1, cin, h, w), case["x_dtype"])
    inputs = [x, np.float32(rng.uniform(0.02, 0.2)), _zero(rng, case["x_dtype"])]
    if case["expand"] == "none":
        inputs += [None] * 6
        hh, hw = h, w
    else:
        k, s = (1, 1) if case["expand"] == "1x1" else (3, 2)
        attrs.update(expand_kernel=k, expand_stride=s, expand_pads=[k // 2] * 4)
        inputs += _stage(rng, case, (hidden, cin, k, k), case["h_dtype"])
        hh, hw = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
    inputs += _stage(rng, case, (hidden, 1, case["dw_kernel"], case["dw_kernel"]), case["d_dtype"])
    inputs += _stage(rng, case, (cout, hidden, 1, 1), case["p_dtype"])
    pad, k, s = case["dw_kernel"] // 2, case["dw_kernel"], case["dw_stride"]
    ho, wo = (hh + 2 * pad - k) // s + 1, (hw + 2 * pad - k) // s + 1
    out_dtype = case["p_dtype"]
    if case["residual"]:
        out_dtype = case["x_dtype"]
        inputs += [np.float32(rng.uniform(0.02, 0.3)), _zero(rng, out_dtype)]
    if case["clamp"]:
        for prefix, dtype in (("expand", case["h_dtype"]), ("dw", case["d_dtype"]), ("proj", case["p_dtype"])):
            info = np.iinfo(dtype)
            attrs[prefix + "_min"] = int(rng.integers(info.min, 0 if info.min < 0 else 100))
            attrs[prefix + "_max"] = int(rng.integers(attrs[prefix + "_min"], info.max + 1))
    names = [f"i{i}" if v is not None else "" for i, v in enumerate(inputs)]
    node = Node("QInvertedResidual", names, ["y"], attrs, name="block", domain="edgerun")
    constants = {n: v for n, v in zip(names[1:], inputs[1:]) if n}
    return node, inputs, (1, cout, ho, wo), np.dtype(out_dtype), constants


def _oracle(node, inputs):
    return quant_ops._qblock_compute(node, inputs, 19)[0]


@EXAMPLES
@given(case=blocks())
def test_native_block_equals_numpy_kernel_and_oracle(variant, case):
    node, inputs, shape, dtype, constants = _block_case(case)
    expected = _run(sq.QInvertedResidualKernel(), node, inputs, shape, dtype, constants)
    np.testing.assert_array_equal(expected, _oracle(node, inputs))
    for threads in (1, 2):
        native = nq.NativeQInvertedResidualKernel(sq.QInvertedResidualKernel(), threads)
        got = _run(native, node, inputs, shape, dtype, constants)
        np.testing.assert_array_equal(got, expected)


def test_native_block_runs_in_c_on_the_drawn_shapes(monkeypatch):
    """The C kernel, not the numpy fallback, runs a block of the shapes above (the test would pass either way)."""
    rng = np.random.default_rng(3)
    case = dict(rng=rng, expand="1x1", cin=8, hidden=24, cout=8, dw_stride=1, dw_kernel=3, height=9, width=7,
                x_dtype=np.int8, h_dtype=np.uint8, d_dtype=np.int8, p_dtype=np.int8, x_float=False, residual=True,
                weight_zero="zero", per_channel=True, clamp=True)
    node, inputs, shape, dtype, constants = _block_case(case)
    native = nq.NativeQInvertedResidualKernel(sq.QInvertedResidualKernel(), 1)
    monkeypatch.setattr(native.fallback, "run", lambda *a: pytest.fail("the numpy fallback ran"))
    got = _run(native, node, inputs, shape, dtype, constants)
    np.testing.assert_array_equal(got, _oracle(node, inputs))


def test_scratch_layout_fits_the_numpy_kernels_scratch():
    """The C block's buffers, each placed in one of the numpy kernel's scratch buffers, fit it (the plan's
    peak is the numpy kernel's)."""
    g = sq.QBlockGeometry(96, 14, 14, 576, 96, sq.ConvSpec((1, 1), (1, 1), (1, 1), 1, (0, 0)),
                          sq.ConvSpec((3, 3), (1, 1), (1, 1), 576, (1, 1)), 14, 14, 14, 14, True)
    sizes = {"hidden": 216, "dw": 72, "proj": 1344, "pacc": 10752, "a": 7296, "b": 3840, "c": 3840}
    rows, chunk, places, tile_pixels = nq.scratch_layout(g, 96, sizes, False)
    needs = nq._needs(g, rows, chunk, False)
    assert all(sizes[places[need]] >= size for need, size in needs.items())
    used = [places[need] for need in needs] + [places["tile"]]
    assert len(set(used)) == len(used)
    assert sizes[places["tile"]] >= tile_pixels * 96
    assert chunk % 4 == 0 and chunk > 5      # the numpy kernel's own chunk here is 5


# ---------------------------------------------------------------- 1x1 QLinearConv and QGemm
@EXAMPLES
@given(seed=st.integers(0, 2**32 - 1), cin=st.integers(1, 40), cout=st.integers(1, 40), pixels=st.integers(1, 70),
       x_dtype=st.sampled_from([np.int8, np.uint8]), y_dtype=st.sampled_from([np.int8, np.uint8]),
       wide=st.booleans(), bias=st.booleans())
def test_native_pointwise_qlinearconv_equals_numpy(variant, seed, cin, cout, pixels, x_dtype, y_dtype, wide, bias):
    rng = np.random.default_rng(seed)
    x = _q(rng, (2, cin, 1, pixels), x_dtype)
    w = _q(rng, (cout, cin, 1, 1), np.int8)
    wz = rng.integers(-100, 100, size=cout).astype(np.int8) if wide else np.zeros(cout, np.int8)
    inputs = [x, np.float32(0.05), _zero(rng, x_dtype), w, rng.uniform(0.001, 0.05, cout).astype(np.float32), wz,
              np.float32(rng.uniform(0.05, 0.5)), _zero(rng, y_dtype)]
    if bias:
        inputs.append(rng.integers(-5000, 5000, size=cout).astype(np.int32))
    node = Node("QLinearConv", [f"i{i}" for i in range(len(inputs))], ["y"], {"kernel_shape": [1, 1]}, name="c")
    numpy_kernel = quant_ops._QCONV_KERNEL
    shape = (2, cout, 1, pixels)
    expected = _run(numpy_kernel, node, inputs, shape, y_dtype)
    native = nq.NativeQLinearConvKernel(numpy_kernel, 1)
    np.testing.assert_array_equal(_run(native, node, inputs, shape, y_dtype), expected)


@EXAMPLES
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 3), k=st.integers(1, 50), n=st.integers(1, 40),
       trans_b=st.booleans(), a_dtype=st.sampled_from([np.int8, np.uint8]), wide=st.booleans())
def test_native_qgemm_equals_numpy(variant, seed, rows, k, n, trans_b, a_dtype, wide):
    rng = np.random.default_rng(seed)
    a = _q(rng, (rows, k), a_dtype)
    b = _q(rng, (n, k) if trans_b else (k, n), np.int8)
    bz = rng.integers(-100, 100, size=n).astype(np.int8) if wide else np.zeros(n, np.int8)
    inputs = [a, np.float32(0.05), _zero(rng, a_dtype), b, rng.uniform(0.001, 0.05, n).astype(np.float32), bz,
              rng.integers(-5000, 5000, size=n).astype(np.int32), np.float32(0.3), np.int8(-3)]
    node = Node("QGemm", [f"i{i}" for i in range(9)], ["y"], {"transB": int(trans_b)}, name="g",
                domain="com.microsoft")
    expected = _run(sq.QMatMulKernel(), node, inputs, (rows, n), np.int8)
    native = nq.NativeQMatMulKernel(sq.QMatMulKernel(), 1)
    np.testing.assert_array_equal(_run(native, node, inputs, (rows, n), np.int8), expected)


def test_qblock_run_refuses_a_short_buffer():
    """Bad arguments reach the C binding's checks as EdgerunError, not a crash."""
    from edgerun.errors import EdgerunError
    rng = np.random.default_rng(0)
    case = dict(rng=rng, expand="1x1", cin=4, hidden=8, cout=4, dw_stride=1, dw_kernel=3, height=5, width=5,
                x_dtype=np.int8, h_dtype=np.int8, d_dtype=np.int8, p_dtype=np.int8, x_float=False, residual=False,
                weight_zero="zero", per_channel=False, clamp=False)
    node, inputs, shape, dtype, constants = _block_case(case)
    native = nq.NativeQInvertedResidualKernel(sq.QInvertedResidualKernel(), 1)
    native.prepare(node, constants)
    y = np.zeros(shape, dtype)
    fixed, places = native._cached_call(node, inputs, [y], _scratch(native, node, inputs, [y]))
    with pytest.raises(EdgerunError, match="y"):
        nq._call(nq._module().qblock_run, inputs[0][0], np.zeros(3, np.uint8), *fixed, *([None] * 6))
