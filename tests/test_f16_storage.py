"""Float16 activation storage (activation_dtype="float16", edgerun.kernels.f16) and float16 ONNX models.

Oracles: the float64 unsplit block reference (tests/test_kernels_block.py) with a rounding bound derived from
the magnitudes of every term; the float32 run of the same model; onnxruntime for float16 models. Memory: every
planned activation is its float16 size, and the measured peak stays within 64 KiB of the planned one.
"""
from __future__ import annotations

import dataclasses
import json
import tracemalloc

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_close_to_ort, run_ort
from edgerun import InferenceSession, compile_bundle, load, zoo
from edgerun.errors import InvalidOptionError, MemoryBudgetError
from edgerun.executor import CompiledModel
from edgerun.kernels import f16, numpy_block
from test_kernels_block import BlockCase, block_cases, mobilenet_block_case, reference_block, reference_conv

UNIT = 2.0 ** -11          # float16 round-to-nearest: |fl(v) - v| <= UNIT * |v| (normal range)
TINY = 2.0 ** -25          # ... plus at most half the subnormal spacing
MEASURED_SLACK = 64 * 1024  # measured may exceed planned by this much (docs/architecture.md, "Memory")


# ---------------------------------------------------------------- the block, against the float64 reference
def _magnitude(case: BlockCase, ones: bool = False) -> np.ndarray:
    """An element-wise bound of every term the block sums: absolute weights, biases and input, each
    activation's output bounded by max(|v|, 1) (every kind of the table is |act(v)| <= max(|v|, 1))."""
    g, w = case.geom, case.weights
    x = np.ones_like(case.x) if ones else np.abs(case.x)
    hidden = x.astype(np.float64)
    if g.has_expansion:
        hidden = np.maximum(reference_conv(x, np.abs(w.we), np.abs(w.be), g.expand_stride, g.expand_pads), 1.0)
    dw = reference_conv(hidden, np.abs(w.wd)[:, None], np.abs(w.bd), g.dw_stride, g.dw_pads, True)
    dw = np.maximum(dw, 1.0)
    out = np.einsum("oe,ehw->ohw", np.abs(w.wp).astype(np.float64), dw) + np.abs(w.bp)[:, None, None]
    return out + (x if g.residual else 0.0)


def _roundings(case: BlockCase) -> int:
    """Float16 roundings along the longest chain of one output: expansion store, bias, activation (<= 4 ufunc
    stores), every depthwise product and partial sum, the projection piece and each chunk's accumulation."""
    k = case.geom.dw_kernel
    return 8 + 2 * k * k + 6 + case.sched.t + 4


def _run_half_block(case: BlockCase) -> np.ndarray:
    geom = dataclasses.replace(case.geom, itemsize=2)
    contract = numpy_block.block_contract(geom, case.sched)
    scratch = {buf.name: np.full(buf.nbytes // 2, np.nan, np.float16) for buf in contract.scratch}
    out = np.full((geom.out_channels, geom.out_height, geom.out_width), np.nan, np.float16)
    numpy_block.block_call(case.x.astype(np.float16), out, case.weights, geom, contract, scratch)()
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_cases())
def test_float16_block_is_within_rounding_of_the_float64_reference(case):
    case = dataclasses.replace(case, x=case.x.astype(np.float16).astype(np.float32))   # the stored input
    actual = _run_half_block(case).astype(np.float64)
    expected = reference_block(case)
    # each rounding errs by UNIT of a partial result bounded by the magnitudes, amplified by at most the
    # activations' slopes (1.5 for hardswish) along the chain; TINY terms likewise through unit inputs
    bound = 2.25 * _roundings(case) * (UNIT * _magnitude(case) + TINY * _magnitude(case, ones=True))
    excess = np.abs(actual - expected) - bound
    assert np.all(np.isfinite(actual)) and excess.max() <= 0, f"worst excess {excess.max():.3g}"


def test_float16_block_scratch_is_half_and_bounded_outside_the_arena():
    case = mobilenet_block_case(t=3, band_rows=7)
    full = numpy_block.block_contract(case.geom, case.sched).scratch_bytes()
    half = numpy_block.block_contract(dataclasses.replace(case.geom, itemsize=2), case.sched).scratch_bytes()
    assert half == {name: size // 2 for name, size in full.items()}
    _run_half_block(case)   # warm up
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        geom = dataclasses.replace(case.geom, itemsize=2)
        contract = numpy_block.block_contract(geom, case.sched)
        scratch = {buf.name: np.zeros(buf.nbytes // 2, np.float16) for buf in contract.scratch}
        out = np.zeros((geom.out_channels, geom.out_height, geom.out_width), np.float16)
        x = case.x.astype(np.float16)
        run = numpy_block.block_call(x, out, case.weights, geom, contract, scratch)
        allocated = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.reset_peak()
        run()
        escaped = tracemalloc.get_traced_memory()[1] - base - allocated
    finally:
        tracemalloc.stop()
    assert escaped <= 2 * f16.PIECE_BYTES + 8 * numpy_block.HALF_UFUNC_BUFFER_ELEMENTS * 4


def test_matmul_into_float16_pieces_equal_float32_product_rounded():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 300)).astype(np.float32)
    b = rng.standard_normal((300, 77)).astype(np.float16)
    out = np.empty((40, 77), np.float16)
    f16.matmul_into(a, b, out)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    # one float16 rounding of a float32 product (inner 300: float32 error far below the float16 step)
    bound = UNIT * np.abs(exact) + 300 * 2.0 ** -23 * (np.abs(a).astype(np.float64) @ np.abs(b)) + TINY
    assert np.all(np.abs(out.astype(np.float64) - exact) <= bound)


# ---------------------------------------------------------------- sessions
def _feeds(sess, rng):
    arg = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in arg.shape]
    return {arg.name: rng.standard_normal(shape).astype(np.float32)}


@pytest.fixture(scope="module")
def small_v2():
    return zoo.mobilenet_v2(width=0.35, resolution=96)


def test_float16_plan_stores_every_activation_in_two_bytes(small_v2):
    half = InferenceSession(small_v2, kernels_backend="numpy", activation_dtype="float16")
    full = InferenceSession(small_v2, kernels_backend="numpy")
    compiled = half.compiled
    assert half.plan.activation_dtype == "float16" and full.plan.activation_dtype == "float32"
    for name, nbytes in compiled.activations.items():
        info = compiled.graph.value_info[name]
        assert info.dtype == np.float32 and nbytes == int(np.prod(info.shape)) * 2
        assert compiled.views[name].dtype == np.float16 if name in compiled.views else True
    assert compiled.problem.buffers == {n: s // 2 for n, s in full.compiled.problem.buffers.items()}
    for step in compiled.steps:   # the blocks' scratch is float16 too: half of the same float32 schedule
        if step.kind == "block":
            assert all(view.dtype == np.float16 for view in step.scratch.values())


def _minimum(graph, dtype: str, segments: bool) -> int:
    with pytest.raises(MemoryBudgetError) as info:
        CompiledModel(graph, budget=1, backend="numpy", threads=1, segments=segments, activation_dtype=dtype)
    return info.value.minimum_bytes


def test_float16_session_matches_float32_run_and_measures_its_plan(small_v2):
    rng = np.random.default_rng(0)
    full = InferenceSession(small_v2, kernels_backend="numpy", threads=1)
    feeds = _feeds(full, rng)
    expected = full.run(None, feeds)[0]
    per_block, streamed = (_minimum(full.graph, "float16", segments) for segments in (False, True))
    assert streamed < per_block
    for budget in (None, per_block, streamed):
        half = InferenceSession(small_v2, kernels_backend="numpy", threads=1, activation_dtype="float16",
                                memory_budget=budget)
        actual = half.run(None, feeds, profile=True)[0]
        assert actual.dtype == np.float32
        assert bool(half.plan.segments) == (budget == streamed)
        # ~60 stored layers, a few float16 roundings each relative to the network's largest values
        assert np.abs(actual - expected).max() <= 60 * 4 * UNIT * np.abs(expected).max()
        assert half.last_run.planned_peak_bytes == (budget or half.plan.peak_bytes)
        assert half.last_run.measured_peak_bytes - half.last_run.planned_peak_bytes <= MEASURED_SLACK


def test_mobilenet_v2_float16_minima_are_half_the_float32_ones():
    graph = InferenceSession(zoo.mobilenet_v2(), kernels_backend="numpy", threads=1).graph
    for segments in (False, True):
        full, half = _minimum(graph, "float32", segments), _minimum(graph, "float16", segments)
        assert half <= full // 2 + 16 * 1024


@pytest.mark.parametrize("builder", [lambda: zoo.shufflenet_v1(), lambda: zoo.mobilenet_v3_small_like(),
                                     lambda: zoo.mobilenet_v1(width=0.5, resolution=128)])
def test_other_families_halve_and_match_float32(builder):
    model = builder()
    full = InferenceSession(model, kernels_backend="numpy", threads=1)
    half = InferenceSession(model, kernels_backend="numpy", threads=1, activation_dtype="float16")
    feeds = _feeds(full, np.random.default_rng(2))
    expected = full.run(None, feeds)[0]
    actual = half.run(None, feeds, profile=True)[0]
    assert np.abs(actual - expected).max() <= 60 * 4 * UNIT * max(1.0, np.abs(expected).max())
    assert half.plan.peak_bytes <= full.plan.peak_bytes // 2 + 16 * 1024
    assert half.last_run.measured_peak_bytes - half.last_run.planned_peak_bytes <= MEASURED_SLACK


def test_native_backend_float16_equals_numpy_float16_up_to_the_float32_kernels(small_v2):
    from edgerun import kernels
    if not kernels.native_available():
        pytest.skip("the C extension is not built")
    sessions = [InferenceSession(small_v2, kernels_backend=b, threads=1, activation_dtype="float16")
                for b in ("numpy", "native")]
    feeds = _feeds(sessions[0], np.random.default_rng(4))
    numpy_out, native_out = (s.run(None, feeds)[0] for s in sessions)
    # the blocks run the same numpy float16 code; the staged float32 steps (the classifier) may round their
    # float32 results to float16 one step apart
    assert np.all(np.abs(native_out - numpy_out) <= 2.0 ** -10 * np.abs(numpy_out) + TINY)


def test_staged_kernel_plans_float32_copies_of_its_float16_tensors():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 6])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Softmax", ["r"], ["s"], axis=-1),
             helper.make_node("Relu", ["s"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    sess = InferenceSession(model, kernels_backend="numpy", activation_dtype="float16", optimize_graph=False)
    feeds = {"x": np.random.default_rng(5).standard_normal((1, 4, 5, 6)).astype(np.float32)}
    actual = sess.run(None, feeds, profile=True)[0]
    softmax = next(s for s in sess.compiled.steps if s.node.op_type == "Softmax")
    assert isinstance(softmax.kernel, f16.StagedKernel)
    assert {k: v.nbytes for k, v in softmax.scratch.items() if k.startswith("f16.")} == \
        {"f16.in0": 4 * 120, "f16.out0": 4 * 120}
    expected = run_ort(model, feeds)[0]
    assert np.all(np.abs(actual - expected) <= 4 * UNIT * np.abs(expected) + TINY)


# ---------------------------------------------------------------- options, bundles, CLI
@pytest.mark.parametrize("bad", ["int8", "bfloat16", "half", 16, np.float16])
def test_unknown_activation_dtype_is_an_option_error(small_v2, bad):
    with pytest.raises(InvalidOptionError, match="activation_dtype"):
        InferenceSession(small_v2, activation_dtype=bad)


def test_bundle_keeps_float16_storage(small_v2, tmp_path):
    path = tmp_path / "v2.edgerun"
    info = compile_bundle(small_v2, path, input_shapes={"input": (1, 3, 96, 96)}, kernels_backend="numpy", threads=1,
                          activation_dtype="float16")
    session = InferenceSession(small_v2, kernels_backend="numpy", threads=1, activation_dtype="float16")
    assert info.plan.activation_dtype == "float16" and info.arena_bytes == session.plan.peak_bytes
    bundle = load(path, kernels_backend="numpy")
    assert bundle.plan.activation_dtype == "float16" and bundle.arena_bytes == info.arena_bytes
    feeds = _feeds(session, np.random.default_rng(6))
    np.testing.assert_array_equal(bundle.run(None, feeds)[0], session.run(None, feeds)[0])


def test_cli_plan_states_the_float16_peak(small_v2, tmp_path, capsys):
    from edgerun import cli
    path = tmp_path / "v2.onnx"
    onnx.save(small_v2, path)
    common = ["plan", str(path), "--kernels", "numpy", "--threads", "1", "--activation-dtype", "float16"]
    assert cli.main(common + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = InferenceSession(small_v2, kernels_backend="numpy", threads=1, activation_dtype="float16").plan
    assert report["activation_dtype"] == "float16" and report["planned_peak_bytes"] == expected.peak_bytes
    assert cli.main(common) == 0
    text = capsys.readouterr().out
    assert f"planned peak: {expected.peak_bytes:,} B" in text and "float16 activations" in text
    with pytest.raises(SystemExit):
        cli.main(["plan", str(path), "--activation-dtype", "int4"])


# ---------------------------------------------------------------- float16 ONNX models
def _float16_model(cast_wrapped: bool):
    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float16), "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float16), "b")
    w2 = numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float16), "w2")
    dtype = TensorProto.FLOAT if cast_wrapped else TensorProto.FLOAT16
    nodes = [helper.make_node("Conv", ["h", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Conv", ["r", "w2"], ["o"])]
    if cast_wrapped:
        nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16)] + nodes + \
                [helper.make_node("Cast", ["o"], ["y"], to=TensorProto.FLOAT)]
    else:
        nodes = [helper.make_node("Identity", ["x"], ["h"])] + nodes + [helper.make_node("Identity", ["o"], ["y"])]
    graph = helper.make_graph(nodes, "f16", [helper.make_tensor_value_info("x", dtype, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", dtype, [1, 4, 8, 8])], [w, b, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("cast_wrapped", [False, True])
@pytest.mark.parametrize("activation_dtype", ["float32", "float16"])
def test_float16_models_run_on_float32_kernels(cast_wrapped, activation_dtype):
    model = _float16_model(cast_wrapped)
    dtype = np.float32 if cast_wrapped else np.float16
    x = np.random.default_rng(8).standard_normal((1, 3, 8, 8)).astype(dtype)
    sess = InferenceSession(model, kernels_backend="numpy", activation_dtype=activation_dtype)
    actual = sess.run(None, {"x": x})[0]
    expected = run_ort(model, {"x": x})[0]
    assert actual.dtype == expected.dtype == dtype
    assert all(step.kind == "kernel" for step in sess.compiled.steps)
    assert all(np.asarray(v).dtype != np.float16 for v in sess.compiled.graph.initializers.values())
    # onnxruntime computes in float16 (its rounding of every stored value) where edgerun computes in float32
    assert_close_to_ort(actual.astype(np.float32), expected.astype(np.float32), rel=8 * UNIT)


# ---------------------------------------------------------------- the pretrained model on the sample photos
@pytest.fixture(scope="module")
def pretrained():
    return zoo.mobilenet_v2(pretrained=True)


@pytest.mark.parametrize("photo,classes", [("chelsea", range(281, 286)), ("coffee", (967, 968))])
def test_pretrained_top5_is_unchanged_by_float16_storage(pretrained, photo, classes):
    import skimage.data
    model = pretrained
    feeds = {"input": zoo.preprocess_imagenet(getattr(skimage.data, photo)())}
    expected = InferenceSession(model, threads=1).run(None, feeds)[0][0]
    actual = InferenceSession(model, threads=1, activation_dtype="float16").run(None, feeds)[0][0]
    assert int(actual.argmax()) == int(expected.argmax()) and int(actual.argmax()) in classes
    assert set(np.argsort(actual)[-5:]) == set(np.argsort(expected)[-5:])
    assert np.abs(actual - expected).max() <= 60 * 4 * UNIT * np.abs(expected).max()


def test_table3_measures_the_float16_plan_at_its_minimum(small_v2):
    from edgerun.cli import table3
    run = table3.measured_half_run(small_v2, "numpy")
    graph = InferenceSession(small_v2, kernels_backend="numpy", threads=1).graph
    assert run.minimum_bytes == run.planned_bytes == _minimum(graph, "float16", True)
    assert 0 <= run.measured_bytes - run.planned_bytes <= MEASURED_SLACK
    assert "float16" in table3.format_measured_half({"v2": run})[0]
