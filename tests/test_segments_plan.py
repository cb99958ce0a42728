"""Segments in the scheduler, the plan and the executor (issue 11): budgets below the per-block minimum
get a streamed plan that runs, or MemoryBudgetError with the minimum over segmentations."""
import dataclasses
import json
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import scheduler
from edgerun import InferenceSession, MemoryBudgetError, zoo
from scheduler import Problem, RingPlacement, SegmentLayout, SegmentOption, Step

onnxruntime = pytest.importorskip("onnxruntime")

MEASURED_SLACK_BYTES = 64 * 1024


# ---------------------------------------------------------------- a hand-worked problem (scheduler alone)
def hand_problem(layouts=None) -> Problem:
    """produce -> x (1000 B) -> c1 -> a (2000 B) -> c2 -> b (500 B) -> tail -> y (100 B); c1, c2 may stream."""
    calls = []

    def layout(band_rows, chunking):
        calls.append((band_rows, chunking))
        if chunking == "rows":
            return SegmentLayout(300, (RingPlacement("a", 2, 10, 256, 0),), calls=20, row_calls=20)
        return SegmentLayout(300 + 100 * band_rows, (RingPlacement("a", 2 + band_rows, 10, 256 + 128 * band_rows, 0),),
                             calls=10 // band_rows + 1, row_calls=20)

    steps = [Step("produce", "P", [], ["x"], macs=10), Step("c1", "Conv", ["x"], ["a"], macs=1000),
             Step("c2", "Conv", ["a"], ["b"], macs=1000), Step("tail", "T", ["b"], ["y"], macs=10)]
    return Problem(buffers={"x": 1000, "a": 2000, "b": 500, "y": 100}, steps=steps, outputs=["y"], backend="test",
                   segments=[SegmentOption("seg", ("c1", "c2"), 5, layouts or layout)])


def test_hand_worked_segment_plan_offsets_and_peak():
    problem = hand_problem()
    # without the segment: x (1024 aligned) and a (2048) alive at c1
    fastest = scheduler.schedule(problem)
    assert fastest.peak_bytes == 3072 and fastest.segments == ()
    # streamed: at the segment x 1024 + b 512 + its arena 320 = 1856. Greedy by size: x at 0, b at 1024 (alive
    # with x at the segment), the arena (320) after both at 1536, y (step 2 with b only) at 0.
    assert scheduler.minimum_peak(problem) == (1856, "seg")
    plan = scheduler.schedule(problem, budget=1900)
    assert plan.peak_bytes == 1856
    assert [s.name for s in plan.steps] == ["produce", "seg", "tail"]
    assert plan.offsets == {"x": 0, "b": 1024, "y": 0}
    (segment,) = plan.segments
    assert (segment.name, segment.steps, segment.band_rows, segment.chunking) == ("seg", ("c1", "c2"), 1, "rows")
    assert (segment.offset, segment.bytes) == (1536, 300)
    assert segment.rings == (RingPlacement("a", 2, 10, 256, 1536),)
    assert plan.step("seg").bytes == 1856 and plan.step("seg").scratch_offsets == {"segment": 1536}
    scheduler.verify_plan(problem, plan)
    assert scheduler.plan_differences(problem, plan) == []
    # a larger budget takes the fastest steady band that fits (fewer calls): band 4 needs 700 -> 1536 + 704 =
    # 2240 > 2100, band 2 needs 500 -> 1536 + 512 = 2048 <= 2100
    roomy = scheduler.schedule(problem, budget=2100)
    assert roomy.segments[0].band_rows == 2 and roomy.segments[0].chunking == "steady"
    assert roomy.peak_bytes <= 2100


def test_hand_worked_budget_below_the_streamed_minimum_names_the_segment():
    with pytest.raises(scheduler.BudgetInfeasible) as info:
        scheduler.schedule(hand_problem(), budget=1855)
    assert (info.value.minimum_bytes, info.value.limiting_step) == (1856, "seg")


def test_segment_plan_json_round_trip_and_tampering():
    problem = hand_problem()
    plan = scheduler.schedule(problem, budget=1900)
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["segments"][0]["rings"] == [{"name": "a", "rows": 2, "height": 10, "bytes": 256, "offset": 1536}]
    again = scheduler.Plan.from_dict(data)
    assert again == plan
    scheduler.verify_plan(problem, again)
    # an unsegmented plan's dict has no "segments" key (older readers see the same dict as before)
    assert "segments" not in scheduler.schedule(problem).to_dict()
    moved = dict(data, segments=[dict(data["segments"][0], rings=[dict(data["segments"][0]["rings"][0],
                                                                       offset=1800)])])
    with pytest.raises(ValueError, match="outside the segment's arena"):
        scheduler.verify_plan(problem, scheduler.Plan.from_dict(moved))
    renamed = scheduler.Plan.from_dict(dict(data, segments=[dict(data["segments"][0], name="other")]))
    assert any("not a segment this model offers" in d for d in scheduler.plan_differences(problem, renamed))
    bigger = scheduler.Plan.from_dict(dict(data, segments=[dict(data["segments"][0], bytes=400)]))
    assert any("arena 400 bytes in the plan, 300 here" in d for d in scheduler.plan_differences(problem, bigger))


def test_problem_without_segments_plans_as_before():
    problem = hand_problem()
    bare = dataclasses.replace(problem, segments=[])
    assert scheduler.minimum_peak(bare) == (3072, "c1")
    with pytest.raises(scheduler.BudgetInfeasible):
        scheduler.schedule(bare, budget=2000)


def test_segments_must_be_consecutive_steps():
    problem = hand_problem()
    with pytest.raises(ValueError, match="not consecutive"):
        dataclasses.replace(problem, segments=[SegmentOption("bad", ("c1", "tail"), 5, lambda b, c: None)])


# ---------------------------------------------------------------- graphs built with onnx.helper
def _conv(name, x, y, weights, cin, cout, k, stride=1, pad=None, dilation=1, group=1, rng=None):
    w = (rng.standard_normal((cout, cin // group, k, k)) * (1.0 / np.sqrt(cin * k * k / group))).astype(np.float32)
    b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    weights += [numpy_helper.from_array(w, name + "_w"), numpy_helper.from_array(b, name + "_b")]
    p = (k - 1) * dilation // 2 if pad is None else pad
    return helper.make_node("Conv", [x, name + "_w", name + "_b"], [y], name=name, kernel_shape=[k, k],
                            strides=[stride, stride], pads=[p, p, p, p], dilations=[dilation, dilation], group=group)


def _model(nodes, weights, in_shape, classes=10, last_channels=None):
    rng = np.random.default_rng(3)
    fc_w = (rng.standard_normal((classes, last_channels)) * 0.1).astype(np.float32)
    weights = weights + [numpy_helper.from_array(fc_w, "fc_w")]
    nodes = nodes + [helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
                     helper.make_node("Gemm", ["flat", "fc_w"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [in_shape[0], classes])],
                              weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def plain_conv_chain():
    """3x3 -> 3x3 stride 2 -> 5x5 -> 3x3 dilation 2 -> depthwise 3x3 -> 1x1, ReLUs and a max pool."""
    rng, w, n = np.random.default_rng(0), [], []
    n.append(_conv("c1", "input", "t1", w, 3, 16, 3, rng=rng))
    n.append(helper.make_node("Relu", ["t1"], ["r1"], name="r1"))
    n.append(_conv("c2", "r1", "t2", w, 16, 24, 3, stride=2, rng=rng))
    n.append(helper.make_node("Relu", ["t2"], ["r2"], name="r2"))
    n.append(_conv("c3", "r2", "t3", w, 24, 24, 5, rng=rng))
    n.append(helper.make_node("MaxPool", ["t3"], ["p3"], name="pool3", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    n.append(_conv("c4", "p3", "t4", w, 24, 24, 3, dilation=2, rng=rng))
    n.append(helper.make_node("Relu", ["t4"], ["r4"], name="r4"))
    n.append(_conv("c5", "r4", "t5", w, 24, 24, 3, group=24, rng=rng))
    n.append(_conv("c6", "t5", "t6", w, 24, 32, 1, rng=rng))
    n.append(helper.make_node("GlobalAveragePool", ["t6"], ["pooled"], name="gap"))
    return _model(n, w, [1, 3, 40, 40], last_channels=32)


def resnet_style():
    """A stem and two residual blocks (conv-relu-conv + skip, relu after the add), one strided."""
    rng, w, n = np.random.default_rng(1), [], []
    n.append(_conv("stem", "input", "s", w, 3, 16, 3, rng=rng))
    n.append(helper.make_node("Relu", ["s"], ["s_r"], name="stem_relu"))
    x = "s_r"
    for i in range(2):
        n.append(_conv(f"b{i}a", x, f"b{i}a_o", w, 16, 16, 3, rng=rng))
        n.append(helper.make_node("Relu", [f"b{i}a_o"], [f"b{i}a_r"], name=f"b{i}a_relu"))
        n.append(_conv(f"b{i}b", f"b{i}a_r", f"b{i}b_o", w, 16, 16, 3, rng=rng))
        n.append(helper.make_node("Add", [x, f"b{i}b_o"], [f"b{i}_sum"], name=f"b{i}_add"))
        n.append(helper.make_node("Relu", [f"b{i}_sum"], [f"b{i}_out"], name=f"b{i}_relu"))
        x = f"b{i}_out"
    n.append(_conv("down", x, "d", w, 16, 32, 3, stride=2, rng=rng))
    n.append(helper.make_node("GlobalAveragePool", ["d"], ["pooled"], name="gap"))
    return _model(n, w, [1, 3, 32, 32], last_channels=32)


def budgets_between(minimum: int, peak: int, count: int = 4) -> list[int]:
    return sorted({minimum, *(int(minimum + (peak - minimum) * k / count) for k in range(1, count + 1))})


def onnxruntime_outputs(model, feeds):
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def check_budget_sweep(model, feeds, expected, need_segments=True):
    """Every budget from the streamed minimum to the fastest plan's peak gives a plan within it whose output
    matches; some of them stream; measured (tracemalloc) within 64 KiB of planned."""
    fastest = InferenceSession(model, kernels_backend="numpy")
    with pytest.raises(MemoryBudgetError) as info:
        InferenceSession(model, memory_budget=1, kernels_backend="numpy")
    minimum = info.value.minimum_bytes
    per_block, _ = scheduler.minimum_peak(dataclasses.replace(fastest.compiled.problem, segments=[]))
    streamed = 0
    for budget in budgets_between(minimum, fastest.plan.peak_bytes):
        sess = InferenceSession(model, memory_budget=budget, kernels_backend="numpy")
        assert sess.plan.peak_bytes <= budget
        out = sess.run(None, feeds, profile=True)[0]
        stats = sess.last_run
        assert stats.measured_peak_bytes - stats.planned_peak_bytes <= MEASURED_SLACK_BYTES
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(expected))))
        streamed += bool(sess.plan.segments)
        assert bool(sess.plan.segments) == (budget < per_block)
    if need_segments:
        assert minimum < per_block and streamed >= 1
    return minimum, per_block


@pytest.mark.parametrize("build", [plain_conv_chain, resnet_style])
def test_built_graphs_stream_below_the_per_block_minimum(build):
    model = build()
    feeds = {"input": np.random.default_rng(5).standard_normal(
        [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)}
    minimum, per_block = check_budget_sweep(model, feeds, onnxruntime_outputs(model, feeds))
    # for a network of streamable ops only the streamed minimum is far below the per-block one
    assert minimum * 2 <= per_block


@pytest.mark.parametrize("disabled", [None, {"fuse_add"}])
def test_resnet_segment_streams_the_residual_adds(disabled):
    """With fuse_add the residual Adds live in the convs before them (their sum input S); without it
    they are steps of their own. Either way they stream inside the segment."""
    model = resnet_style()
    fastest = InferenceSession(model, kernels_backend="numpy", disabled_passes=disabled)
    minimum, step = scheduler.minimum_peak(fastest.compiled.problem)
    sess = InferenceSession(model, memory_budget=minimum, kernels_backend="numpy", disabled_passes=disabled)
    members = {name for segment in sess.plan.segments for name in segment.steps}
    adds = {"b0_add", "b1_add"} if disabled else {
        n.name for n in sess.graph.nodes if n.op_type == "FusedConv" and n.input(3)}
    assert len(adds) == 2 and adds <= members
    assert step in {s.name for s in sess.plan.steps}


def test_budget_below_the_streamed_minimum_names_the_limiting_step():
    model = plain_conv_chain()
    with pytest.raises(MemoryBudgetError) as info:
        InferenceSession(model, memory_budget=1, kernels_backend="numpy")
    minimum, step = info.value.minimum_bytes, info.value.limiting_step
    assert f"{minimum} bytes, set by step {step!r}" in str(info.value)
    plan = InferenceSession(model, memory_budget=minimum, kernels_backend="numpy").plan
    assert plan.peak_bytes == minimum
    assert step in {s.name for s in plan.steps}
    with pytest.raises(MemoryBudgetError):
        InferenceSession(model, memory_budget=minimum - 1, kernels_backend="numpy")


def _segment_conv_macs(session, feeds) -> int:
    """Multiply-adds the segment runners' row kernels count while they run (numpy_segment: each conv and
    block row kernel adds what it multiplies)."""
    session.run(None, feeds)
    return sum(step.kernel.macs for step in session.compiled.steps if step.kind == "segment")


def test_streamed_plan_does_the_unstreamed_multiply_adds():
    model = plain_conv_chain()
    minimum, _ = scheduler.minimum_peak(InferenceSession(model, kernels_backend="numpy").compiled.problem)
    session = InferenceSession(model, memory_budget=minimum, kernels_backend="numpy")
    compiled = session.compiled
    feeds = {"input": np.random.default_rng(2).standard_normal(
        [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)}
    members = {name for segment in compiled.plan.segments for name in segment.steps}
    # the depthwise + 1x1 pair became an InvertedResidual block (no expansion): its multiply-adds by its geometry
    assert any(s.is_block for s in compiled.problem.steps if s.name in members)
    conv_macs = sum(scheduler.problem.unsplit_macs(s) for s in compiled.problem.steps
                    if s.name in members and s.kind in ("FusedConv", "InvertedResidual"))
    assert conv_macs > 0 and _segment_conv_macs(session, feeds) == conv_macs
    planned = sum(s.macs for s in compiled.planned_problem.steps)
    unstreamed = sum(scheduler.problem.unsplit_macs(s) for s in compiled.problem.steps)
    assert planned == unstreamed


# ---------------------------------------------------------------- the zoo: MobileNetV2
SMALL_SHAPE = (1, 3, 160, 160)    # width 0.35 at 160: the smallest zoo size where streaming beats per block


@pytest.fixture(scope="module")
def small_mobilenet():
    """(model, fastest session, per-block minimum, streamed minimum and its step, a session at that minimum)."""
    model = zoo.mobilenet_v2(width=0.35, resolution=160)
    fastest = InferenceSession(model, kernels_backend="numpy")
    per_block, _ = scheduler.minimum_peak(dataclasses.replace(fastest.compiled.problem, segments=[]))
    minimum, step = scheduler.minimum_peak(fastest.compiled.problem)
    streamed = InferenceSession(model, memory_budget=minimum, kernels_backend="numpy")
    return model, fastest, per_block, (minimum, step), streamed


def test_mobilenet_v2_streams_below_its_per_block_minimum(small_mobilenet):
    model, fastest, per_block, (minimum, step), streamed = small_mobilenet
    feeds = {"input": np.random.default_rng(2).standard_normal(SMALL_SHAPE).astype(np.float32)}
    expected = onnxruntime_outputs(model, feeds)
    assert minimum < per_block and step.startswith("segment[")
    for sess in (streamed, InferenceSession(model, memory_budget=per_block - 1, kernels_backend="numpy")):
        assert sess.plan.peak_bytes <= max(minimum, sess.plan.budget) and sess.plan.segments
        out = sess.run(None, feeds, profile=True)[0]
        stats = sess.last_run
        assert stats.measured_peak_bytes - stats.planned_peak_bytes <= MEASURED_SLACK_BYTES
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(expected))))
    # from the per-block minimum on, plans are the per-block ones
    assert not InferenceSession(model, memory_budget=per_block, kernels_backend="numpy").plan.segments


def test_segmented_plan_survives_a_bundle(tmp_path, small_mobilenet):
    import edgerun
    model, fastest, _, (minimum, _), _ = small_mobilenet
    path = tmp_path / "m.edgerun"
    edgerun.compile_bundle(model, path, memory_budget=minimum, kernels_backend="numpy",
                           input_shapes={"input": SMALL_SHAPE})
    bundle = edgerun.load(path, kernels_backend="numpy")
    assert bundle.plan.segments and bundle.plan.peak_bytes <= minimum
    feeds = {"input": np.random.default_rng(4).standard_normal(SMALL_SHAPE).astype(np.float32)}
    np.testing.assert_allclose(bundle.run(None, feeds)[0], fastest.run(None, feeds)[0], rtol=1e-4, atol=1e-4)


def test_segment_runs_inside_the_executor_arena(small_mobilenet):
    compiled = small_mobilenet[-1].compiled
    base = compiled.arena.ctypes.data
    segments = [step for step in compiled.steps if step.kind == "segment"]
    assert segments
    for step in segments:
        segment = compiled.plan.segment(step.node.name)
        assert step.kernel.arena.ctypes.data == base + segment.offset
        assert step.kernel.arena_bytes == segment.bytes
        rings = [source for tensor, source in sorted(step.kernel.sources.items()) if tensor >= 0]
        assert len(rings) == len(segment.rings)
        for ring, source in zip(segment.rings, rings):
            assert source.ring.ctypes.data == base + ring.offset
            assert source.ring.nbytes == ring.bytes


# ---------------------------------------------------------------- visible: edgerun plan, the profile
def test_cli_plan_lists_segments_and_rings(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    model = plain_conv_chain()
    path = tmp_path / "chain.onnx"
    onnx.save(model, str(path))
    minimum, _ = scheduler.minimum_peak(InferenceSession(model, kernels_backend="numpy").compiled.problem)
    plan = InferenceSession(model, memory_budget=minimum, kernels_backend="numpy").plan
    root = Path(__file__).resolve().parents[1]

    def edgerun(*args):
        result = subprocess.run([sys.executable, "-m", "edgerun", "plan", str(path), "--budget", str(minimum),
                                 "--kernels", "numpy", *args], capture_output=True, text=True, cwd=root, timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout

    data = json.loads(edgerun("--json"))
    assert data["segments"] == [s.to_dict() for s in plan.segments] and data["segments"]
    assert data["planned_peak_bytes"] == plan.peak_bytes
    text = edgerun()
    for segment in plan.segments:
        assert f"segment {segment.name}: {len(segment.steps)} steps streamed in bands of {segment.band_rows}" in text
        for ring in segment.rings:
            assert re.search(rf"ring {re.escape(ring.name)}\s+{ring.rows}\s+of\s+{ring.height} rows\s+{ring.bytes:,} B",
                             text), ring


def test_profile_rows_count_the_rings_at_the_segment_step():
    from edgerun import profiler
    model = resnet_style()
    minimum, _ = scheduler.minimum_peak(InferenceSession(model, kernels_backend="numpy").compiled.problem)
    sess = InferenceSession(model, memory_budget=minimum, kernels_backend="numpy")
    rows = {row["name"]: row for row in profiler.plan_rows(sess)}
    for segment in sess.plan.segments:
        row = rows[segment.name]
        assert row["op"] == "Segment" and row["planned_bytes"] == sess.plan.step(segment.name).bytes
        assert row["planned_bytes"] >= segment.bytes >= segment.ring_bytes > 0
        assert row["params"] > 0 and row["macs"] > 0
