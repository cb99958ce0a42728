"""Arena kernels of non-block steps (edgerun/kernels/numpy_steps.py, native_steps.py).

Each kernel is checked against the reference op of the registry (edgerun.ops) over parameter grids,
for the memory it allocates beside its outputs and declared scratch (tracemalloc), and end to end:
ShuffleNet v1 and MobileNetV1 run inside their planned arena and match onnxruntime on both backends.
"""
import tracemalloc

import numpy as np
import pytest

from edgerun import InferenceSession, ops, zoo
from edgerun.ir import Node
from edgerun.kernels import native_steps, numpy_steps
from conftest import assert_close_to_ort, run_ort

OPSET = 13


def arena_kernel(op: str, domain: str = ""):
    """The numpy arena kernel the op's definition names."""
    return ops.definition(op, domain).step
KERNEL_SLACK_BYTES = 16 * 1024        # what a kernel may allocate beyond its outputs and scratch
MEASURED_SLACK_BYTES = 64 * 1024      # as tests/test_memory.py


def reference(node, inputs, opset=OPSET):
    return ops.lookup(node, opset).compute(node, inputs, opset)


def scratch_for(kernel, node, in_shapes, out_shapes):
    sizes = kernel.scratch_bytes(node, in_shapes, out_shapes)
    return {name: np.empty(size // 4, np.float32) for name, size in sizes.items()}


def run_kernel(kernel, node, inputs, out_shapes, out_dtype=np.float32):
    """Run into fresh outputs (NaN-filled, so an unwritten element shows) and declared scratch."""
    outs = [np.full(shape, np.nan, dtype=out_dtype) if np.dtype(out_dtype).kind == "f"
            else np.zeros(shape, out_dtype) for shape in out_shapes]
    scratch = scratch_for(kernel, node, [None if x is None else x.shape for x in inputs], out_shapes)
    kernel.run(node, inputs, outs, scratch)
    return outs, scratch


def extra_bytes(kernel, node, inputs, outs, scratch) -> int:
    """tracemalloc peak of one run beyond what existed before it (outputs and scratch preallocated)."""
    kernel.run(node, inputs, outs, scratch)   # warm: first calls may cache module state
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        kernel.run(node, inputs, outs, scratch)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def check_kernel(kernel, node, inputs, opset=OPSET, atol=1e-6, rtol=1e-5):
    expected = reference(node, inputs, opset)[0]
    (out,), scratch = run_kernel(kernel, node, inputs, [expected.shape], expected.dtype)
    np.testing.assert_allclose(out, expected, rtol=rtol, atol=atol)
    assert extra_bytes(kernel, node, inputs, [out], scratch) < KERNEL_SLACK_BYTES


# ---------------------------------------------------------------- pooling
POOL_GRID = [
    # kernel, strides, pads, dilations, ceil_mode
    ([3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 0),        # ShuffleNet's pools
    ([2, 2], [2, 2], [0, 0, 0, 0], [1, 1], 0),
    ([3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 0),
    ([3, 2], [2, 1], [0, 1, 2, 0], [1, 1], 0),         # asymmetric pads, rectangular kernel
    ([3, 3], [2, 2], [0, 0, 0, 0], [1, 1], 1),         # ceil_mode: a partial last window
    ([3, 3], [2, 2], [1, 0, 1, 2], [1, 1], 1),
    ([2, 3], [3, 2], [1, 1, 0, 2], [1, 1], 1),
    ([3, 3], [1, 2], [1, 1, 1, 1], [2, 1], 0),         # dilation
]


def pool_kernel(op, backend):
    kernel = arena_kernel(op)
    return kernel if backend == "numpy" else ops.native_kernel(op, kernel)


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("kernel_shape,strides,pads,dilations,ceil_mode", POOL_GRID)
@pytest.mark.parametrize("shape", [(1, 24, 17, 16), (2, 5, 9, 11)])
def test_max_pool_matches_reference(rng, backend, shape, kernel_shape, strides, pads, dilations, ceil_mode):
    node = Node("MaxPool", ["x"], ["y"], {"kernel_shape": kernel_shape, "strides": strides, "pads": pads,
                                          "dilations": dilations, "ceil_mode": ceil_mode}, "mp")
    x = rng.standard_normal(shape).astype(np.float32)
    check_kernel(pool_kernel("MaxPool", backend), node, [x], opset=21)


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("kernel_shape,strides,pads,dilations,ceil_mode", POOL_GRID)
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool_matches_reference(rng, backend, kernel_shape, strides, pads, dilations, ceil_mode,
                                        count_include_pad):
    node = Node("AveragePool", ["x"], ["y"], {"kernel_shape": kernel_shape, "strides": strides, "pads": pads,
                                              "dilations": dilations, "ceil_mode": ceil_mode,
                                              "count_include_pad": count_include_pad}, "ap")
    x = rng.standard_normal((2, 7, 13, 10)).astype(np.float32)
    check_kernel(pool_kernel("AveragePool", backend), node, [x], opset=21)


def test_native_pools_run_in_c_on_the_shufflenet_pool(rng, monkeypatch):
    # the C path, not the numpy fallback, is what the grid above checks for the common case
    node = Node("AveragePool", ["x"], ["y"], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                              "count_include_pad": 1}, "ap")
    kernel = pool_kernel("AveragePool", "native")
    monkeypatch.setattr(kernel.fallback, "run", lambda *args: pytest.fail("fell back to numpy"))
    check_kernel(kernel, node, [rng.standard_normal((1, 24, 56, 56)).astype(np.float32)])


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [2, 3], "strides": [1, 2], "pads": [1, 0, 0, 2], "ceil_mode": 1, "count_include_pad": 1},
])
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_native_pools_of_rows_wider_than_the_stack_row(rng, op, attrs):
    # rows wider than 4096 floats take the direct C path (no row buffer on the stack)
    node = Node(op, ["x"], ["y"], dict(attrs), "pool")
    check_kernel(pool_kernel(op, "native"), node, [rng.standard_normal((1, 2, 4, 4099)).astype(np.float32)])


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("attrs,shape", [
    ({"kernel_shape": [3], "strides": [2], "pads": [1, 0]}, (1, 4, 15)),                       # 1-D
    ({"kernel_shape": [2, 2, 2], "strides": [1, 2, 2], "pads": [0, 1, 0, 1, 0, 1]}, (1, 3, 4, 6, 5)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, (1, 3, 10, 9)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"}, (1, 3, 10, 9)),
])
def test_pools_of_other_ranks_and_auto_pad(rng, backend, op, attrs, shape):
    node = Node(op, ["x"], ["y"], dict(attrs), "pool")
    x = rng.standard_normal(shape).astype(np.float32)
    check_kernel(pool_kernel(op, backend), node, [x])


def test_max_pool_of_all_negative_values_is_not_zero():
    # the running maximum starts from -inf, not from a zero that would beat every input
    node = Node("MaxPool", ["x"], ["y"], {"kernel_shape": [2, 2], "strides": [2, 2]}, "mp")
    x = -np.arange(1, 1 + 2 * 4 * 4, dtype=np.float32).reshape(1, 2, 4, 4)
    (out,), _ = run_kernel(arena_kernel("MaxPool"), node, [x], [(1, 2, 2, 2)])
    assert out[0, 0].tolist() == [[-1.0, -3.0], [-9.0, -11.0]]


def test_average_pool_divisor_with_and_without_padding():
    # 3x3 window at the corner of a 2x2 map of ones, pads 1: 4 real taps of 9
    x = np.ones((1, 1, 2, 2), np.float32)
    for include, expected in ((0, 1.0), (1, 4.0 / 9.0)):
        node = Node("AveragePool", ["x"], ["y"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                  "strides": [2, 2], "count_include_pad": include}, "ap")
        (out,), _ = run_kernel(arena_kernel("AveragePool"), node, [x], [(1, 1, 1, 1)])
        assert out[0, 0, 0, 0] == pytest.approx(expected, rel=1e-6)


def test_max_pool_with_indices_runs_on_the_reference_op():
    node = Node("MaxPool", ["x"], ["y", "i"], {"kernel_shape": [2, 2]}, "mp")
    assert ops.arena_kernel(node, [np.float32], [np.float32, np.int64]) is None
    plain = Node("MaxPool", ["x"], ["y"], {"kernel_shape": [2, 2]}, "mp")
    assert ops.arena_kernel(plain, [np.float32], [np.float32]) is arena_kernel("MaxPool")


# ---------------------------------------------------------------- activations
ACTIVATIONS = [
    ("Relu", {}), ("Tanh", {}), ("Sigmoid", {}), ("HardSwish", {}),
    ("HardSigmoid", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
    ("LeakyRelu", {}), ("LeakyRelu", {"alpha": 0.2}), ("LeakyRelu", {"alpha": 3.0}), ("LeakyRelu", {"alpha": -0.5}),
    ("Elu", {}), ("Elu", {"alpha": 0.3}), ("Elu", {"alpha": 2.5}),
]


@pytest.mark.parametrize("op,attrs", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1, 16, 9, 9), (3, 1000)])
def test_activations_match_reference(rng, op, attrs, shape):
    node = Node(op, ["x"], ["y"], dict(attrs), op.lower())
    x = (rng.standard_normal(shape) * 6).astype(np.float32)
    x.flat[:4] = [-100.0, 100.0, 0.0, -3.0]    # saturation, sigmoid overflow, the kinks
    check_kernel(arena_kernel(op), node, [x])


@pytest.mark.parametrize("low,high", [(0.0, 6.0), (-1.5, None), (None, 0.25), (None, None), (2.0, 2.0)])
def test_clip_with_bound_inputs_matches_reference(rng, low, high):
    x = (rng.standard_normal((2, 8, 5, 5)) * 4).astype(np.float32)
    inputs = [x, None if low is None else np.float32(low), None if high is None else np.float32(high)]
    names = ["x", "" if low is None else "lo", "" if high is None else "hi"]
    node = Node("Clip", names, ["y"], {}, "clip")
    check_kernel(arena_kernel("Clip"), node, inputs)


def test_clip_with_bound_attributes_matches_reference(rng):
    x = (rng.standard_normal((1, 8, 6, 6)) * 4).astype(np.float32)
    node = Node("Clip", ["x"], ["y"], {"min": -0.5, "max": 1.5}, "clip")
    check_kernel(arena_kernel("Clip"), node, [x], opset=6)


# ---------------------------------------------------------------- transpose, softmax
@pytest.mark.parametrize("shape,perm", [
    ((1, 3, 80, 28, 28), [0, 2, 1, 3, 4]),      # ShuffleNet's channel shuffle
    ((2, 3, 4, 5), [3, 1, 0, 2]),
    ((64, 300), [1, 0]),
    ((4, 5, 6), None),                         # no perm: reversed axes
])
def test_transpose_matches_reference(rng, shape, perm):
    attrs = {} if perm is None else {"perm": perm}
    node = Node("Transpose", ["x"], ["y"], attrs, "t")
    check_kernel(arena_kernel("Transpose"), node, [rng.standard_normal(shape).astype(np.float32)])


def test_transpose_of_integers_stays_an_arena_kernel():
    node = Node("Transpose", ["x"], ["y"], {"perm": [1, 0]}, "t")
    assert ops.arena_kernel(node, [np.int64], [np.int64]) is arena_kernel("Transpose")
    x = np.arange(12, dtype=np.int64).reshape(3, 4)
    (out,), _ = run_kernel(arena_kernel("Transpose"), node, [x], [(4, 3)], np.int64)
    np.testing.assert_array_equal(out, x.T)


@pytest.mark.parametrize("shape", [(1, 1000), (4, 3, 17), (2, 1)])
@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_over_the_last_axis_matches_reference(rng, shape, opset):
    node = Node("Softmax", ["x"], ["y"], {"axis": -1}, "sm")
    x = (rng.standard_normal(shape) * 20).astype(np.float32)
    check_kernel(arena_kernel("Softmax"), node, [x], opset=opset, atol=1e-7)


def test_softmax_on_other_axes_runs_on_the_reference_op():
    # axis 1 (or none) means different things before and after opset 13: left to the reference op
    for attrs in ({"axis": 1}, {}):
        assert ops.arena_kernel(Node("Softmax", ["x"], ["y"], attrs, "sm"), [np.float32], [np.float32]) is None


def test_global_average_pool_matches_reference(rng):
    node = Node("GlobalAveragePool", ["x"], ["y"], {}, "gap")
    check_kernel(arena_kernel("GlobalAveragePool"), node, [rng.standard_normal((2, 96, 14, 14)).astype(np.float32)])


# ---------------------------------------------------------------- grouped 1x1 convolutions
def fused_conv(group, activation="", params=()):
    return Node("FusedConv", ["x", "w", "b"], ["y"], {
        "kernel_shape": [1, 1], "strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": group,
        "activation": activation, "activation_params": list(params)}, "gconv", "edgerun")


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("group,cin,cout,size,activation,params", [
    (3, 240, 60, (28, 28), "relu", ()),           # ShuffleNet 2x g=3 bottleneck 1x1s
    (3, 60, 240, (28, 28), "", ()),
    (2, 8, 6, (5, 7), "clip", (0.0, 6.0)),
    (4, 16, 32, (3, 3), "hardswish", ()),
])
def test_grouped_pointwise_conv_matches_reference(rng, backend, group, cin, cout, size, activation, params):
    node = fused_conv(group, activation, params)
    x = rng.standard_normal((2, cin) + size).astype(np.float32)
    w = (rng.standard_normal((cout, cin // group, 1, 1)) / np.sqrt(cin // group)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    kernel = numpy_steps.FusedConvKernel() if backend == "numpy" else native_steps.NativeFusedConvKernel()
    kernel.prepare(node, {"w": w, "b": b})
    if backend == "native":
        assert kernel._native_kind(node, cin, cout) == "conv"   # one banded call over all groups
    # numpy: a grouped 1x1 needs no im2col scratch, only hardswish's activation buffer; native: every
    # group's taps of one band of rows, in whole GEMM tiles (conv_band_rows of the gathered values per pixel)
    need = kernel.scratch_bytes(node, [x.shape, w.shape], [(2, cout) + size])
    if backend == "numpy":
        assert set(need) <= {"act"}
        assert sum(need.values()) <= cout * int(np.prod(size)) * 4
    else:
        from edgerun.kernels import native
        slab = native.conv_slab_groups(group, cin // group)   # 1024 taps a slab: every group here
        assert slab == group
        taps = group * min(256, cin // group)
        rows = numpy_steps.conv_band_rows(taps, *size)
        tile = native.conv_sizes(native.conv_geometry((cin,) + size, (cout,) + size, w.shape, group, (1, 1), (1, 1),
                                                      (0, 0, 0, 0), rows))[2]
        assert need == {"cols": taps * -(-rows * size[1] // tile) * tile * 4}
        assert need["cols"] <= numpy_steps.CONV_BAND_TARGET_BYTES + taps * tile * 4
    check_kernel(kernel, node, [x, w, b], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("kernel_shape,strides,pads,dilations,activation,params", [
    ([3, 3], [2, 2], [1, 1, 1, 1], [1, 1], "relu", ()),          # the stems of MobileNetV1 / ShuffleNet
    ([3, 3], [1, 1], [0, 0, 0, 0], [1, 1], "", ()),
    ([5, 3], [1, 2], [2, 0, 1, 1], [2, 1], "clip", (0.0, 6.0)),
    ([1, 1], [2, 2], [0, 0, 0, 0], [1, 1], "hardswish", ()),     # strided 1x1: not a plain pointwise
])
def test_group_one_conv_matches_reference(rng, backend, kernel_shape, strides, pads, dilations, activation, params):
    node = Node("FusedConv", ["x", "w", "b"], ["y"], {
        "kernel_shape": kernel_shape, "strides": strides, "pads": pads, "dilations": dilations, "group": 1,
        "activation": activation, "activation_params": list(params)}, "conv", "edgerun")
    x = rng.standard_normal((2, 3, 23, 20)).astype(np.float32)
    w = (rng.standard_normal((20, 3) + tuple(kernel_shape)) / 3).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    kernel = numpy_steps.FusedConvKernel() if backend == "numpy" else native_steps.NativeFusedConvKernel()
    kernel.prepare(node, {"w": w, "b": b})
    if backend == "native":
        assert kernel._native_kind(node, 3, 20) == "conv"
    check_kernel(kernel, node, [x, w, b], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cin,cout,pixels", [
    (1, 1, 1), (3, 5, 31), (24, 13, 32), (160, 40, 784), (40, 160, 49), (300, 25, 33),   # edges, M % 12
    (1024, 30, 49), (513, 17, 196), (7, 64, 12544 + 5),                                    # K blocks of 256
])
@pytest.mark.parametrize("activation,params", [("", ()), ("relu", ()), ("clip", (0.0, 6.0)), ("hardswish", ()),
                                               ("leakyrelu", (0.1,)), ("sigmoid", ()), ("elu", (1.0,))])
def test_packed_pointwise_gemm_matches_numpy(rng, cin, cout, pixels, activation, params):
    from edgerun.kernels import Activation, native
    from edgerun.ops.activation import apply_activation
    x = rng.standard_normal((cin, pixels)).astype(np.float32)
    w = (rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    packed_floats, edge_floats = native.packed_pointwise_sizes(cout, pixels, cin)
    assert edge_floats <= 256 * 32
    packed = native.pack_pointwise_weights(w)
    assert packed.size == packed_floats
    edge = np.full(edge_floats, np.nan, np.float32) if edge_floats else None
    out = np.full((cout, pixels), np.nan, np.float32)
    native.pointwise_conv_packed(x, packed, b, out, edge, Activation(activation, params))
    expected = apply_activation(w.astype(np.float64) @ x + b[:, None], activation, list(params))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.sqrt(cin))
    out_nobias = np.full((cout, pixels), np.nan, np.float32)
    native.pointwise_conv_packed(x, packed, None, out_nobias, edge, Activation(activation, params))
    expected = apply_activation(w.astype(np.float64) @ x, activation, list(params))
    np.testing.assert_allclose(out_nobias, expected, rtol=1e-4, atol=1e-4 * np.sqrt(cin))


def test_packed_pointwise_gemm_rejects_a_short_edge_scratch(rng):
    from edgerun.errors import EdgerunError
    from edgerun.kernels import native
    w = rng.standard_normal((8, 16)).astype(np.float32)
    # 41 pixels: a partial last tile, so an edge panel, for every variant's tile width (8, 16 or 32)
    x = rng.standard_normal((16, 41)).astype(np.float32)
    out = np.empty((8, 41), np.float32)
    edge_floats = native.packed_pointwise_sizes(8, 41, 16)[1]
    assert edge_floats > 0
    with pytest.raises(EdgerunError, match="edge"):
        native.pointwise_conv_packed(x, native.pack_pointwise_weights(w), None, out,
                                     np.empty(edge_floats - 1, np.float32))


# ---------------------------------------------------------------- Gemm (classifiers)
@pytest.mark.parametrize("rows,k,n", [(1, 1280, 1000), (2, 17, 5), (3, 64, 9), (1, 1, 1)])
@pytest.mark.parametrize("trans_b,alpha,beta,c_shape", [
    (1, 1.0, 1.0, "n"), (0, 1.0, 1.0, "n"), (1, 1.0, 1.0, None), (1, 1.0, 0.0, "n"),
    (1, 1.0, 1.0, "1n"),
    (1, 0.5, 1.0, "n"), (1, 1.0, 2.0, "n"), (1, 1.0, 1.0, "mn"),   # fall back to numpy
])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_gemm_matches_reference(rng, rows, k, n, trans_b, alpha, beta, c_shape, threads):
    a = rng.standard_normal((rows, k)).astype(np.float32)
    b = (rng.standard_normal((n, k) if trans_b else (k, n)) / np.sqrt(k)).astype(np.float32)
    inputs, names = [a, b], ["a", "b"]
    if c_shape is not None:
        inputs.append(rng.standard_normal({"n": (n,), "1n": (1, n), "mn": (rows, n)}[c_shape]).astype(np.float32))
        names.append("c")
    node = Node("Gemm", names, ["y"], {"transB": trans_b, "alpha": alpha, "beta": beta}, name="classifier")
    kernel = ops.native_kernel("Gemm", arena_kernel("Gemm"), threads)
    kernel.prepare(node, {"b": b})
    check_kernel(kernel, node, inputs, atol=1e-5, rtol=1e-4)


def test_native_gemm_runs_in_c_on_the_mobilenet_classifier(rng):
    class NoFallback:
        def run(self, *args):
            raise AssertionError("the numpy Gemm ran")
    a = rng.standard_normal((1, 1280)).astype(np.float32)
    b = rng.standard_normal((1000, 1280)).astype(np.float32)
    c = rng.standard_normal(1000).astype(np.float32)
    node = Node("Gemm", ["a", "b", "c"], ["y"], {"transB": 1}, name="classifier")
    kernel = ops.native_kernel("Gemm", arena_kernel("Gemm"), 2)
    kernel.prepare(node, {"b": b, "c": c})
    kernel.fallback = NoFallback()
    (out,), _ = run_kernel(kernel, node, [a, b, c], [(1, 1000)])
    np.testing.assert_allclose(out, a.astype(np.float64) @ b.T.astype(np.float64) + c, rtol=1e-4, atol=1e-3)


def test_native_gemm_threads_give_the_same_bits(rng, split_every_step):
    a = rng.standard_normal((1, 1280)).astype(np.float32)
    b = rng.standard_normal((1000, 1280)).astype(np.float32)
    node = Node("Gemm", ["a", "b"], ["y"], {"transB": 1}, name="classifier")
    outs = []
    for threads in (1, 2, 3):
        kernel = ops.native_kernel("Gemm", arena_kernel("Gemm"), threads)
        kernel.prepare(node, {"b": b})
        outs.append(run_kernel(kernel, node, [a, b], [(1, 1000)])[0][0])
    np.testing.assert_array_equal(outs[1], outs[0])
    np.testing.assert_array_equal(outs[2], outs[0])


# ---------------------------------------------------------------- whole models
MODELS = {
    "shufflenet_v1": lambda: zoo.shufflenet_v1(groups=3, width=2.0, resolution=224, batch=1),
    "mobilenet_v1": lambda: zoo.mobilenet_v1(batch=1),
}


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype(np.float32)


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_runs_inside_its_arena_and_matches_onnxruntime(name, backend, image):
    model = MODELS[name]()
    sess = InferenceSession(model, kernels_backend=backend)
    assert all(step.kind != "reference" for step in sess.compiled.steps), \
        [step.node.op_type for step in sess.compiled.steps if step.kind == "reference"]
    out = sess.run(None, {"input": image}, profile=True)[0]
    stats = sess.last_run
    assert stats.planned_peak_bytes == sess.plan.peak_bytes
    assert stats.escaped_bytes <= MEASURED_SLACK_BYTES, [
        (s.name, s.extra_bytes) for s in stats.steps if s.extra_bytes > KERNEL_SLACK_BYTES]
    assert_close_to_ort(out, run_ort(model, {"input": image})[0])

