"""Table 3 of the MobileNetV2 paper: the metric on hand-built graphs and on the zoo models, the
comparison with the paper's cells, and the 16-bit restatement of planned peaks.

Every expected number is worked out by hand here (channels x H x W x 2 bytes)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import scheduler
from edgerun import zoo
from edgerun.cli import table3
from edgerun.loader import load_model
from edgerun.shape_inference import infer_shapes
from edgerun.cli.table3 import Table3Row, cell_matches, kb_matches, table3_rows, truncated


# ---------------------------------------------------------------- hand-built graphs
class TinyNet:
    """Builds a small ONNX graph node by node; weights are zeros (only shapes matter)."""

    def __init__(self, input_shape):
        self.nodes, self.inits = [], []
        self.input_shape = input_shape
        self.count = 0

    def _name(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array):
        name = self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, out=None, **attrs):
        out = out or self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self._name("n"), **attrs))
        return out

    def conv(self, x, cin, cout, kernel=1, stride=1, group=1, out=None):
        w = self.const(np.zeros((cout, cin // group, kernel, kernel), np.float32))
        pad = kernel // 2
        return self.node("Conv", [x, w], out, kernel_shape=[kernel, kernel], strides=[stride, stride],
                         pads=[pad] * 4, group=group)

    def relu6(self, x, out=None):
        return self.node("Clip", [x, self.const(np.float32(0)), self.const(np.float32(6))], out)

    def model(self, output, shape):
        graph = helper.make_graph(
            self.nodes, "tiny",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, self.input_shape)],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, shape)], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def shaped(model):
    graph = load_model(model)
    return infer_shapes(graph, {"X": tuple(graph.inputs[0].shape)})


def as_tuples(rows):
    return [(r.height, r.width, r.channels, r.bytes, r.tensor) for r in rows]


def test_stem_blocks_and_head_count_only_the_bottlenecks():
    net = TinyNet([1, 3, 16, 16])
    s = net.relu6(net.conv("X", 3, 8, kernel=3, stride=2))                # stem 8@8x8: B of a chain
    d = net.relu6(net.conv(s, 8, 8, kernel=3, group=8))                   # depthwise, inside
    p = net.conv(d, 8, 4, out="P")                                        # projection A: 4@8x8
    e = net.node("Relu", [net.conv(p, 4, 24)])                            # expansion 24@8x8, inside
    f = net.node("Relu", [net.conv(e, 24, 24, kernel=3, stride=2, group=24)])  # 24@4x4, inside
    q = net.conv(f, 24, 6, out="Q")                                       # projection: 6@4x4
    h = net.node("Relu", [net.conv(q, 6, 32)])                            # head 32@4x4, inside
    g = net.node("GlobalAveragePool", [h], out="G")                       # 32@1x1 ends the chain
    v = net.node("Flatten", [g])
    net.node("Gemm", [v, net.const(np.zeros((10, 32), np.float32))], out="Y", transB=1)

    rows = table3_rows(shaped(net.model("Y", [1, 10])))

    assert as_tuples(rows) == [(8, 8, 4, 4 * 8 * 8 * 2, "P"), (4, 4, 6, 6 * 4 * 4 * 2, "Q"),
                               (1, 1, 32, 32 * 2, "G")]


def test_a_branching_tensor_is_materialized_and_the_expansion_is_not():
    net = TinyNet([1, 3, 8, 8])
    a = net.conv("X", 3, 4, out="A")                       # two consumers: must exist whole
    e = net.relu6(net.conv(a, 4, 16))                      # 16@8x8 expansion, inside
    p = net.conv(e, 16, 4, out="P")
    net.node("Add", [a, p], out="R")

    rows = table3_rows(shaped(net.model("R", [1, 4, 8, 8])))

    assert as_tuples(rows) == [(8, 8, 4, 4 * 64 * 2, "A")]


def test_channel_shuffle_passes_through_a_chain():
    net = TinyNet([1, 6, 4, 4])
    t = net.conv("X", 6, 12, group=3, out="T")                                   # 12@4x4, inside
    r = net.node("Reshape", [t, net.const(np.array([1, 3, 4, 4, 4], np.int64))])
    r = net.node("Transpose", [r], perm=[0, 2, 1, 3, 4])
    r = net.node("Reshape", [r, net.const(np.array([1, 12, 4, 4], np.int64))], out="S")
    d = net.conv(r, 12, 12, kernel=3, group=12)
    net.conv(d, 12, 6, group=3, out="Y")                                          # 6@4x4

    rows = table3_rows(shaped(net.model("Y", [1, 6, 4, 4])))

    assert as_tuples(rows) == [(4, 4, 6, 6 * 16 * 2, "Y")]


def test_a_transpose_that_moves_space_stops_the_chain():
    net = TinyNet([1, 2, 4, 4])
    t = net.conv("X", 2, 8, out="T")                   # 8@4x4 feeds a transpose that swaps H and W
    t = net.node("Transpose", [t], perm=[0, 1, 3, 2])
    d = net.conv(t, 8, 8, kernel=3, group=8)
    net.conv(d, 8, 2, out="Y")

    rows = table3_rows(shaped(net.model("Y", [1, 2, 4, 4])))

    assert as_tuples(rows) == [(4, 4, 8, 8 * 16 * 2, "T")]


# ---------------------------------------------------------------- the zoo models at 224
@pytest.fixture(scope="module")
def zoo_rows():
    builders = {
        "v1": lambda: zoo.mobilenet_v1(1.0, 224),
        "v2": lambda: zoo.mobilenet_v2(1.0, 224),
        "shuffle_g3": lambda: zoo.shufflenet_v1(groups=3, width=2.0),
        "shuffle_g2": lambda: zoo.shufflenet_v1(groups=2, width=2.0),
    }
    return {key: table3_rows(table3.layer_graph(build())) for key, build in builders.items()}


def cells(rows):
    return {(r.height, r.width): (r.channels, r.bytes) for r in rows}


def test_mobilenet_v2_counts_the_16_channel_bottleneck_at_112(zoo_rows):
    assert cells(zoo_rows["v2"]) == {
        (112, 112): (16, 401408),      # 16*112*112*2: not the 32-channel stem nor the 96-channel expansion
        (56, 56): (24, 24 * 56 * 56 * 2),
        (28, 28): (32, 32 * 28 * 28 * 2),
        (14, 14): (96, 96 * 14 * 14 * 2),
        (7, 7): (320, 320 * 7 * 7 * 2),   # not the 1280x7x7 output of the last 1x1 conv
        (1, 1): (1280, 1280 * 2),
    }


def test_mobilenet_v1_counts_the_pointwise_outputs(zoo_rows):
    assert cells(zoo_rows["v1"]) == {
        (112, 112): (64, 1605632), (56, 56): (128, 802816), (28, 28): (256, 401408),
        (14, 14): (512, 200704), (7, 7): (1024, 100352), (1, 1): (1024, 2048),
    }


def test_shufflenet_counts_the_unit_outputs_and_not_the_stem(zoo_rows):
    assert cells(zoo_rows["shuffle_g3"]) == {
        (56, 56): (48, 48 * 3136 * 2), (28, 28): (480, 480 * 784 * 2), (14, 14): (960, 960 * 196 * 2),
        (7, 7): (1920, 1920 * 49 * 2), (1, 1): (1920, 1920 * 2),
    }
    assert cells(zoo_rows["shuffle_g2"]) == {
        (56, 56): (48, 301056), (28, 28): (400, 627200), (14, 14): (800, 313600),
        (7, 7): (1600, 156800), (1, 1): (1600, 3200),
    }


def matching_sizes(rows, paper_column):
    paper = table3.PAPER_CELLS[paper_column]
    by_size = {(r.height, r.width): r for r in rows}
    return {size for size in table3.PAPER_SIZES if cell_matches(paper.get(size), by_size.get(size))}


def test_the_cells_that_match_the_paper(zoo_rows):
    everything = set(table3.PAPER_SIZES)
    assert matching_sizes(zoo_rows["v1"], "MobileNetV1") == everything - {(7, 7)}
    assert matching_sizes(zoo_rows["v2"], "MobileNetV2") == {(112, 112), (1, 1)}
    assert matching_sizes(zoo_rows["shuffle_g3"], "ShuffleNet") == {(56, 56)}
    assert matching_sizes(zoo_rows["shuffle_g2"], "ShuffleNet") == everything - {(112, 112)}


def test_every_mismatch_has_a_recorded_explanation(zoo_rows):
    columns = [("MobileNetV1", "MobileNetV1", zoo_rows["v1"]), ("MobileNetV2", "MobileNetV2", zoo_rows["v2"]),
               ("ShuffleNet g=3", "ShuffleNet", zoo_rows["shuffle_g3"]),
               ("ShuffleNet g=2", "ShuffleNet", zoo_rows["shuffle_g2"])]
    lines = table3.format_table(columns)
    notes = [line for line in lines if line.startswith("  [")]
    # V1: 7x7; V2: 56, 28, 14, 7; ShuffleNet g=3: 112, 28, 14, 7, 1, max; g=2: 112
    assert len(notes) == 1 + 4 + 6 + 1
    assert not any("no explanation recorded" in line for line in notes)


def test_the_max_row_matches_for_both_mobilenets_and_shufflenet_g2(zoo_rows):
    def biggest(rows):
        return max(r.bytes for r in rows)

    assert biggest(zoo_rows["v1"]) == 1605632 and kb_matches(1600, 1605632)
    assert biggest(zoo_rows["v2"]) == 401408 and kb_matches(400, 401408)
    assert biggest(zoo_rows["shuffle_g2"]) == 627200 and kb_matches(600, 627200)
    assert biggest(zoo_rows["shuffle_g3"]) == 752640 and not kb_matches(600, 752640)


# ---------------------------------------------------------------- Kb and rounding
def test_kb_is_1000_bytes_truncated():
    assert kb_matches(1600, 1605632)          # 1605.6 K; in KiB it would be 1568
    assert not kb_matches(1600, 1568 * 1000)
    assert kb_matches(62, 62720)              # 62.72 -> 62 (2 digits)
    assert kb_matches(600, 627200)            # 627.2 -> 600 (1 digit)
    assert kb_matches(156, 156800)            # 156.8 -> 156 (3 digits)
    assert not kb_matches(32, 31360)          # 31.36 is never 32
    assert not kb_matches(199, 100352)        # the paper's V1 7x7 cell


def test_truncated_cuts_significant_digits():
    assert truncated(627.2, 1) == 600
    assert truncated(313.6, 2) == 310
    assert truncated(2.56, 1) == 2
    assert truncated(0.0, 2) == 0.0


def test_cell_needs_channels_and_memory():
    row = Table3Row(7, 7, 320, 31360, "t")
    assert not cell_matches((320, 32), row)
    assert cell_matches((320, 31), row)
    assert not cell_matches((160, 31), row)
    assert cell_matches(None, None) and not cell_matches((1, 1), None)


# ---------------------------------------------------------------- 16-bit peaks
def test_half_precision_problem_is_laid_out_again_not_halved():
    problem = scheduler.Problem(
        buffers={"x": 400, "y": 256, "idx": 24},
        steps=[scheduler.Step("s0", "Conv", [], ["x", "idx"], scratch={"tmp": 1000}),
               scheduler.Step("s1", "Conv", ["x", "idx"], ["y"])],
        outputs=["y"])
    dtypes = {"x": np.float32, "y": np.float32, "idx": np.int64}

    half = table3.half_precision_problem(problem, dtypes)

    assert half.buffers == {"x": 200, "y": 128, "idx": 24}
    assert half.steps[0].scratch_for(None, "numpy") == {"tmp": 500}
    # fp32, alignment 64, step s0: tmp 1024 + x 448 + idx 64 = 1536
    assert scheduler.schedule(problem).peak_bytes == 1536
    # 16-bit: tmp 512 + x 256 + idx 64 = 832, not 1536 / 2 = 768
    assert scheduler.schedule(half).peak_bytes == 832


def test_mobilenet_v2_memory_minimal_peak_by_hand():
    rows = {r.schedule.split(" (")[0]: r for r in table3.true_peaks(zoo.mobilenet_v2(1.0, 224), "native")}
    minimal = rows["split + row bands"]
    # Block features.2 limits: input 16x112x112 and output 24x56x56 alive, plus one slice of t=5
    # (ceil(96/5) = 20 hidden channels) for a 1-row band: expanded 20 x 3 rows x 112, depthwise 20 x 1 x 56.
    values = 16 * 112 * 112 + 24 * 56 * 56 + 20 * 3 * 112 + 20 * 1 * 56
    assert minimal.fp32_bytes == values * 4 == 1135232
    assert minimal.fp16_bytes == values * 2 == 567616
    layered = rows["layer by layer"]
    # the expansion of features.2 alone reads 16x112x112 and writes 96x112x112
    assert layered.fp32_bytes >= (16 + 96) * 112 * 112 * 4
    assert layered.fp16_bytes >= (16 + 96) * 112 * 112 * 2


# ---------------------------------------------------------------- bench and calibrate helpers
# (edgerun.cli.bench and edgerun.cli.calibrate have the same owner as this file; their pure parts are pinned here)
def test_bench_summary_states_medians_as_ratios():
    from edgerun.cli.bench import Config, summary
    ort = Config("onnxruntime", "onnxruntime", "-", run=None, seconds=[0.003, 0.001, 0.002])
    fast = Config("edgerun native fastest", "native", "fastest", run=None, planned_peak_bytes=1000,
                  estimated_seconds=0.005, seconds=[0.004, 0.005, 0.003])
    small = Config("edgerun native memory-minimal", "native", "memory-minimal", run=None, planned_peak_bytes=100,
                   seconds=[0.006, 0.007, 0.008])

    rows = {r["config"]: r for r in summary("m", [ort, fast, small])["results"]}

    assert rows["onnxruntime"]["median_ms"] == pytest.approx(2.0)
    assert rows["edgerun native fastest"]["vs_onnxruntime"] == pytest.approx(4 / 2)
    assert rows["edgerun native fastest"]["estimated_ms"] == pytest.approx(5.0)
    assert rows["edgerun native memory-minimal"]["vs_onnxruntime"] == pytest.approx(7 / 2)
    assert rows["edgerun native memory-minimal"]["vs_own_fastest"] == pytest.approx(7 / 4)
    assert rows["onnxruntime"]["vs_own_fastest"] is None


def test_relative_fit_recovers_the_coefficients_that_made_the_timings():
    from edgerun.cli.calibrate import fit_relative, median_relative_error
    from scheduler.cost import default_calibration_cases
    truth = scheduler.CostModel("native", s_pw=3e-10, s_dw=2e-9, s_call=5e-6, s_other=1e-9)
    measured = [(g, s, truth.block_seconds(g, s)) for g, s in default_calibration_cases()]

    fitted = fit_relative(measured, "native", s_other=1e-9)

    assert fitted.s_pw == pytest.approx(3e-10, rel=1e-6)
    assert fitted.s_dw == pytest.approx(2e-9, rel=1e-6)
    assert fitted.s_call == pytest.approx(5e-6, rel=1e-6)
    assert median_relative_error(fitted, measured) == pytest.approx(0.0, abs=1e-9)


def test_calibration_path_and_round_trip(tmp_path, monkeypatch):
    from edgerun.cli import calibrate
    from scheduler.cost import calibration_path, load_calibrated
    monkeypatch.setenv("EDGERUN_COST_MODEL_DIR", str(tmp_path))
    assert calibrate.default_path("native") == calibration_path("native") == tmp_path / "cost-native.json"
    assert load_calibrated("native") is None
    model = scheduler.CostModel("native", s_pw=1e-10, s_dw=2e-10, s_call=3e-6, s_other=4e-10)
    model.save(calibrate.default_path("native"))
    assert load_calibrated("native") == model
    assert load_calibrated("numpy") is None
