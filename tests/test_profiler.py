"""edgerun.profiler: rows and totals cross-checked against the session's own plan, hand-worked
multiply-adds and parameter counts, and made-up run statistics with known medians and maxima."""
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun import InferenceSession, profiler
from edgerun.cli import plot
from edgerun.executor import StepProfile
from edgerun.session import RunStats

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- small models (also used by test_cli)
def _init(rng, name, shape, scale=0.3):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def tiny_convnet(classes: int = 10, size: int = 16) -> onnx.ModelProto:
    """conv3x3 s2 (3->8, bias) + ReLU -> conv1x1 (8->4) -> global pool -> flatten -> Gemm (4 -> classes)."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])],
        [_init(rng, "w1", (8, 3, 3, 3)), _init(rng, "b1", (8,)), _init(rng, "w2", (4, 8, 1, 1)),
         _init(rng, "wf", (classes, 4), scale=3.0), _init(rng, "bf", (classes,))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def tiny_block_net(channels: int = 8, expansion: int = 6, size: int = 12) -> onnx.ModelProto:
    """One MobileNetV2 inverted residual: 1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1 linear project, add."""
    rng = np.random.default_rng(2)
    hidden = channels * expansion
    nodes = [
        helper.make_node("Conv", ["x", "we", "be"], ["e"], name="expand"),
        helper.make_node("Clip", ["e", "lo", "hi"], ["e6"], name="expand_relu6"),
        helper.make_node("Conv", ["e6", "wd", "bd"], ["d"], pads=[1, 1, 1, 1], group=hidden, name="depthwise"),
        helper.make_node("Clip", ["d", "lo", "hi"], ["d6"], name="dw_relu6"),
        helper.make_node("Conv", ["d6", "wp", "bp"], ["p"], name="project"),
        helper.make_node("Add", ["x", "p"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])],
        [_init(rng, "we", (hidden, channels, 1, 1)), _init(rng, "be", (hidden,)),
         _init(rng, "wd", (hidden, 1, 3, 3)), _init(rng, "bd", (hidden,)),
         _init(rng, "wp", (channels, hidden, 1, 1)), _init(rng, "bp", (channels,)),
         numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
         numpy_helper.from_array(np.array(6.0, np.float32), "hi")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def feeds_for(sess, seed=0):
    rng = np.random.default_rng(seed)
    return {a.name: rng.standard_normal(a.shape).astype(np.float32) for a in sess.get_inputs()}


@pytest.fixture(scope="module")
def tiny_session():
    return InferenceSession(tiny_convnet())


@pytest.fixture(scope="module")
def tiny_report(tiny_session):
    return profiler.profile_report(tiny_session, feeds_for(tiny_session), runs=3)


# ---------------------------------------------------------------- rows against the plan
def test_rows_follow_the_plan_step_by_step(tiny_session, tiny_report):
    plan = tiny_session.plan
    rows = tiny_report["rows"]
    assert [r["name"] for r in rows] == [s.name for s in plan.steps]
    assert [r["planned_bytes"] for r in rows] == [s.bytes for s in plan.steps]
    assert [r["index"] for r in rows] == list(range(len(plan.steps)))
    assert [(r["t"], r["band_rows"]) for r in rows] == [(s.t, s.band_rows) for s in plan.steps]
    assert [r["estimated_seconds"] for r in rows] == [s.estimated_seconds for s in plan.steps]


def test_rows_shapes_macs_and_params_by_hand(tiny_report):
    rows = {r["name"]: r for r in tiny_report["rows"]}
    conv1 = rows["conv1"]
    assert conv1["inputs"] == [[1, 3, 16, 16]] and conv1["outputs"] == [[1, 8, 8, 8]]
    assert conv1["macs"] == 8 * 8 * 8 * (3 * 3 * 3)            # output elements x (Cin/group * k * k)
    assert conv1["params"] == 8 * 3 * 3 * 3 + 8                  # weight + bias
    assert rows["conv2"]["macs"] == 4 * 8 * 8 * 8 and rows["conv2"]["params"] == 32
    assert rows["fc"]["inputs"] == [[1, 4]] and rows["fc"]["outputs"] == [[1, 10]]
    assert rows["fc"]["macs"] == 10 * 4 and rows["fc"]["params"] == 10 * 4 + 10
    assert rows["pool"]["params"] == 0


def test_totals_agree_with_the_plan_and_the_rows(tiny_session, tiny_report):
    totals, rows = tiny_report["totals"], tiny_report["rows"]
    assert totals["planned_peak_bytes"] == tiny_session.plan.peak_bytes
    assert totals["max_step_planned_bytes"] == max(r["planned_bytes"] for r in rows)
    # the arena holds every step's buffers without overlap, so no step needs more than the arena
    assert totals["max_step_planned_bytes"] <= totals["planned_peak_bytes"]
    assert totals["measured_peak_bytes"] == totals["planned_peak_bytes"] + totals["escaped_bytes"]
    assert totals["escaped_bytes"] >= max(r["escaped_bytes"] for r in rows)
    assert totals["weights_bytes"] == 4 * (8 * 27 + 8 + 32 + 40 + 10)
    assert totals["params"] == 8 * 27 + 8 + 32 + 40 + 10
    assert totals["macs"] == sum(r["macs"] for r in rows)
    assert totals["process_rss_bytes"] > totals["weights_bytes"]


def test_every_measured_row_is_planned_plus_escaped(tiny_report):
    for row in tiny_report["rows"]:
        assert row["escaped_bytes"] >= 0
        assert row["measured_bytes"] == row["planned_bytes"] + row["escaped_bytes"]
        assert row["seconds"] >= 0


# ---------------------------------------------------------------- measurements from made-up runs
def _fake_run(escaped, step_values):
    return RunStats(planned_peak_bytes=1000, measured_peak_bytes=1000 + escaped, escaped_bytes=escaped,
                    steps=[StepProfile(name, "Conv", seconds, extra, extra) for name, seconds, extra in step_values])


def test_seconds_are_medians_and_escapes_are_maxima():
    rows = [{"name": "a", "planned_bytes": 640}, {"name": "b", "planned_bytes": 128}]
    runs = [_fake_run(10, [("a", 0.5, 7), ("b", 0.1, 0)]),
            _fake_run(30, [("a", 0.2, 3), ("b", 0.4, 64)]),
            _fake_run(20, [("a", 0.9, 5), ("b", 0.3, 2)])]
    a, b = profiler.add_measurements(rows, runs)
    assert (a["seconds"], a["escaped_bytes"], a["measured_bytes"]) == (0.5, 7, 647)
    assert (b["seconds"], b["escaped_bytes"], b["measured_bytes"]) == (0.3, 64, 192)


def test_a_step_missing_from_a_run_is_an_error():
    rows = [{"name": "a", "planned_bytes": 64}]
    with pytest.raises(profiler.InvalidInputError, match="'a'"):
        profiler.add_measurements(rows, [_fake_run(0, [("a", 0.1, 0)]), _fake_run(0, [])])


def test_measured_peak_takes_the_largest_escape_of_runs_and_steps(tiny_session):
    rows = profiler.plan_rows(tiny_session)
    names = [r["name"] for r in rows]
    runs = [_fake_run(100, [(n, 0.001, 40) for n in names]), _fake_run(70, [(n, 0.001, 250) for n in names])]
    measured = profiler.add_measurements(rows, runs)
    totals = profiler.totals(tiny_session, measured, runs)
    assert totals["escaped_bytes"] == 250
    assert totals["measured_peak_bytes"] == tiny_session.plan.peak_bytes + 250


def test_a_real_run_counts_every_step_escape_in_its_measured_peak(tiny_session):
    tiny_session.run(None, feeds_for(tiny_session), profile=True)
    stats = tiny_session.last_run
    assert stats.escaped_bytes >= max(p.run_bytes for p in stats.steps)
    assert all(p.run_bytes >= p.extra_bytes >= 0 for p in stats.steps)
    assert profiler.measured_peak_bytes(stats) == stats.planned_peak_bytes + stats.escaped_bytes


def test_profile_runs_rejects_a_bad_count(tiny_session):
    with pytest.raises(profiler.InvalidInputError, match="runs"):
        profiler.profile_runs(tiny_session, feeds_for(tiny_session), runs=0)


# ---------------------------------------------------------------- a real inverted-residual block
def _block_session(**kwargs):
    return InferenceSession(tiny_block_net(), **kwargs)


def test_block_row_counts_the_papers_multiply_adds():
    name = next(s.name for s in _block_session().plan.steps if s.kind == "InvertedResidual")
    sess = _block_session(schedule={name: (2, 12)})         # t = 2, one band of all 12 rows: no recompute
    row = next(r for r in profiler.plan_rows(sess) if r["name"] == name)
    h, w, k, t, k_out = 12, 12, 8, 6, 8
    assert row["is_block"] and (row["t"], row["band_rows"]) == (2, 12)
    assert row["macs"] == h * w * k * t * (k + 9 + k_out)    # Table 1 of the paper, stride 1
    assert row["params"] == 48 * 8 + 48 + 48 * 9 + 48 + 8 * 48 + 8
    assert row["inputs"] == [[1, 8, 12, 12]] and row["outputs"] == [[1, 8, 12, 12]]


def test_block_banding_recomputes_expansion_halos():
    name = next(s.name for s in _block_session().plan.steps if s.kind == "InvertedResidual")
    sess = _block_session(schedule={name: (1, 4)})          # 3 bands of 4 rows; they need 5, 6, 5 hidden rows
    row = next(r for r in profiler.plan_rows(sess) if r["name"] == name)
    expand_per_row, depthwise, project = 12 * 8 * 48, 12 * 12 * 48 * 9, 12 * 12 * 48 * 8
    assert row["macs"] == (5 + 6 + 5) * expand_per_row + depthwise + project


# ---------------------------------------------------------------- Table 3 reference and the plot
def test_table3_reference_is_the_papers_tensor_at_float32():
    ref = plot.table3_reference("mobilenet_v2_1_224_pretrained", [1, 3, 224, 224])
    assert ref["paper_bytes_16bit"] == 16 * 112 * 112 * 2 == 401_408
    assert ref["bytes"] == 802_816
    assert plot.table3_reference("mobilenet_v1_1_224_seed0", [1, 3, 224, 224])["bytes"] == 64 * 112 * 112 * 4


@pytest.mark.parametrize("name, shape", [("mobilenet_v2_0.35_224_seed0", [1, 3, 224, 224]),
                                         ("shufflenet_v1_g8_1x_224_seed0", [1, 3, 224, 224]),
                                         ("mobilenet_v2_1_96_seed0", [1, 3, 96, 96]),
                                         ("tiny", [1, 3, 224, 224])])
def test_table3_reference_only_for_canonical_models(name, shape):
    assert plot.table3_reference(name, shape) is None


def test_plot_writes_a_png(tiny_report, tmp_path):
    path = tmp_path / "memory.png"
    plot.plot_memory(tiny_report, path, budget=20_000, reference={"bytes": 9000, "label": "reference"})
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_without_matplotlib_says_how_to_install(tiny_report, tmp_path, monkeypatch):
    for module in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(plot.PlotUnavailableError, match=r"pip install 'edgerun\[plot\]'"):
        plot.plot_memory(tiny_report, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
