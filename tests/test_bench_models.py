"""`edgerun bench`'s model list and summary: light:NAME models with seeded random weights, --models, the ratio
table with its geometric mean, and onnxruntime's thread spinning switched off."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun.cli import bench, bench_models
from edgerun.models import UsageError


def test_model_lists_expand_and_the_defaults_hold_every_family():
    assert bench_models.split_model_list("zoo, light:vgg19,x.onnx") == list(bench_models.ZOO_BENCH_MODELS) + [
        "light:vgg19", "x.onnx"]
    assert bench_models.split_model_list("all") == list(bench_models.DEFAULT_MODELS)
    assert {"mobilenet_v1", "shufflenet_v1", "mobilenet_v3_small_like"} <= set(bench_models.DEFAULT_MODELS)
    assert len([m for m in bench_models.DEFAULT_MODELS if m.startswith("light:")]) == 9
    args = bench.parse_args(["mobilenet_v1", "--models", "light:squeezenet", "--threads", "2"])
    assert args.model_specs == ["mobilenet_v1"] and args.models == "light:squeezenet" and args.threads == 2


def test_unknown_light_models_are_named():
    with pytest.raises(UsageError, match="light models are"):
        bench_models.resolve_bench_model("light:lenet")


def tiny_model():
    w = numpy_helper.from_array(np.full((2, 3, 1, 1), 0.5, np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Softmax", ["c"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_random_weights_are_seeded_and_keep_the_shapes():
    model = tiny_model()
    first, again = bench_models.with_random_weights(model), bench_models.with_random_weights(model)
    w = numpy_helper.to_array(first.graph.initializer[0])
    assert w.shape == (2, 3, 1, 1) and len(np.unique(w)) == w.size
    np.testing.assert_array_equal(w, numpy_helper.to_array(again.graph.initializer[0]))
    assert [o.name for o in first.graph.output] == ["y", "c"]   # the logits beside the Softmax
    assert numpy_helper.to_array(model.graph.initializer[0]).max() == 0.5   # the caller's model is untouched
    onnx.checker.check_model(first)


def test_onnxruntime_runs_without_spinning_threads():
    _, session = bench.onnxruntime_config(tiny_model().SerializeToString(), 2)
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2


def test_ratio_table_has_one_line_per_model_and_the_geometric_mean():
    def result(model, ort_ms, fast_ms, small_ms):
        rows = [{"backend": "onnxruntime", "plan": "-", "vs_onnxruntime": 1.0, "vs_own_fastest": None},
                {"backend": "native", "plan": "fastest", "vs_onnxruntime": fast_ms / ort_ms, "vs_own_fastest": 1.0},
                {"backend": "native", "plan": "memory-minimal", "vs_onnxruntime": small_ms / ort_ms,
                 "vs_own_fastest": small_ms / fast_ms}]
        return {"model": model, "results": rows}

    results = [result("a", 2.0, 4.0, 4.0), result("b", 4.0, 2.0, 3.0)]
    assert bench.ratio_rows(results) == [("a", 2.0, 1.0), ("b", 0.5, 1.5)]
    assert bench.geometric_mean([2.0, 0.5]) == pytest.approx(1.0)
    lines = bench.format_ratios(results, 1)
    assert lines[-1].split()[-2:] == ["1.00", f"{1.5 ** 0.5:.2f}"]


def test_budgets_add_the_plan_for_each_budget_between_the_minimum_and_the_fastest():
    from edgerun import zoo
    from edgerun.errors import EdgerunError

    assert bench.parse_args(["--budgets", "400KB, 1000000"]).budgets == [400_000, 1_000_000]
    with pytest.raises(EdgerunError, match="--budgets"):
        bench.parse_args(["--budgets", "lots"])
    model = zoo.mobilenet_v2(width=0.35, resolution=96)
    smallest = bench.minimum_budget(model, "numpy", 1)
    configs, _ = bench.configurations(model, 1, ["numpy"], [smallest - 1, smallest + 20_000, 10 ** 9])
    plans = {config.plan: config for config in configs}
    fastest = plans["fastest"].planned_peak_bytes
    assert smallest + 20_000 < fastest   # the budget lies between: its plan is timed, the other two are not
    budgeted = plans[f"budget {smallest + 20_000:,} B"]
    assert smallest <= budgeted.planned_peak_bytes <= smallest + 20_000 and budgeted.budget_bytes == smallest + 20_000
    assert [c.plan for c in configs].count(f"budget {10 ** 9:,} B") == 0 and len(configs) == 4
    assert budgeted.max_abs_diff <= 1e-4 * max(1.0, float(np.abs(configs[0].run()[0]).max()))
