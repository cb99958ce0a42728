"""Concat without the copy (edgerun/concat_alias.py, scheduler/alias.py): producers write straight into their
slice of the Concat's output; outputs match onnxruntime, the planned peak never exceeds the plan without it
(EDGERUN_NO_FUSE_CONCAT=1), and bundles keep whichever plan they were compiled with."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import scheduler
from conftest import assert_close_to_ort, run_ort
from edgerun import InferenceSession, kernels
from scheduler.alias import merge_buffers

BACKENDS = ["numpy", "native"] if kernels.native_available() else ["numpy"]


# ---------------------------------------------------------------- the scheduler's side
def chain_problem():
    steps = [scheduler.Step("a", "k", [], ["p1"]), scheduler.Step("b", "k", [], ["p2"]),
             scheduler.Step("cat", "k", ["p1", "p2"], ["out"]), scheduler.Step("use", "k", ["out"], ["y"])]
    return scheduler.Problem(buffers={"p1": 100, "p2": 60, "out": 160, "y": 10}, steps=steps, outputs=["y"])


def test_merged_parts_vanish_and_their_host_lives_from_the_first_producer():
    merged = merge_buffers(chain_problem(), {"p1": "out", "p2": "out"})
    assert merged.buffers == {"out": 160, "y": 10}
    assert merged.lifetime("out") == (0, 3)
    assert [(s.reads, s.writes) for s in merged.steps] == [([], ["out"]), ([], ["out"]), (["out"], ["out"]),
                                                           (["out"], ["y"])]
    plain, fused = scheduler.schedule(chain_problem()), scheduler.schedule(merged)
    assert fused.peak_bytes < plain.peak_bytes
    scheduler.verify_plan(merged, fused)


@pytest.mark.parametrize("hosts, why", [({"p1": "nope"}, "unknown"), ({"y": "out"}, "output"),
                                        ({"p1": "p2", "p2": "out"}, "chain"), ({"out": "p1"}, "fit")])
def test_impossible_merges_are_refused(hosts, why):
    with pytest.raises(ValueError):
        merge_buffers(chain_problem(), hosts)


# ---------------------------------------------------------------- the runtime's side
def branch_model(batch=1, channels=(3, 5, 2), size=6, shared=False):
    """x -> 1x1 conv_i for each branch, then Concat(axis 1) [+ the input itself], then a 1x1 conv."""
    rng = np.random.default_rng(0)
    nodes, inits, names = [], [], []
    for i, c in enumerate(channels):
        inits.append(numpy_helper.from_array(rng.standard_normal((c, 4, 1, 1)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", ["x", f"w{i}"], [f"b{i}"]))
        names.append(f"b{i}")
    if shared:   # branch 0 is also read elsewhere: it must stay a buffer of its own
        nodes.append(helper.make_node("Relu", ["b0"], ["r0"]))
        names.append("r0")
    names.append("x")
    total = sum(channels) + (channels[0] if shared else 0) + 4
    nodes.append(helper.make_node("Concat", names, ["cat"], axis=1))
    inits.append(numpy_helper.from_array(rng.standard_normal((2, total, 1, 1)).astype(np.float32), "wf"))
    nodes.append(helper.make_node("Conv", ["cat", "wf"], ["y"]))
    graph = helper.make_graph(nodes, "branches", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 [batch, 4, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model


def feed(batch=1, size=6):
    return {"x": np.random.default_rng(1).standard_normal((batch, 4, size, size)).astype(np.float32)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shared", [False, True])
def test_branches_are_written_into_the_concat_output(backend, shared, monkeypatch):
    model = branch_model(shared=shared)
    sess = InferenceSession(model, kernels_backend=backend, threads=2)
    (y,) = sess.run(None, feed(), profile=True)
    assert_close_to_ort(y, run_ort(model, feed())[0], rel=1e-5)
    compiled = sess.compiled
    in_place = {"b1", "b2"} | ({"r0"} if shared else {"b0"})
    assert set(compiled.aliases) == in_place
    for part in in_place:
        assert np.shares_memory(compiled.views[part], compiled.views["cat"])
    assert sess.last_run.measured_peak_bytes - sess.last_run.planned_peak_bytes <= 64 * 1024
    monkeypatch.setenv("EDGERUN_NO_FUSE_CONCAT", "1")
    plain = InferenceSession(model, kernels_backend=backend, threads=2)
    np.testing.assert_array_equal(plain.run(None, feed())[0], y)
    assert plain.compiled.aliases == {}
    assert compiled.plan.peak_bytes <= plain.compiled.plan.peak_bytes


def test_a_batch_of_two_is_not_contiguous_per_input_and_copies():
    model = branch_model(batch=2)
    sess = InferenceSession(model)
    (y,) = sess.run(None, feed(batch=2))
    assert sess.compiled.aliases == {}
    assert_close_to_ort(y, run_ort(model, feed(batch=2))[0], rel=1e-5)


@pytest.mark.parametrize("spec", ["shufflenet_v1:resolution=64", "light:squeezenet"])
def test_no_planned_peak_grows(spec, monkeypatch):
    from edgerun.cli.bench_models import resolve_bench_model
    from edgerun.errors import MemoryBudgetError
    model, _ = resolve_bench_model(spec)

    def peaks():
        sess = InferenceSession(model)
        shapes = {i.name: [d if isinstance(d, int) else 1 for d in i.shape] for i in sess.get_inputs()}
        fastest = sess.prepare(shapes).peak_bytes
        with pytest.raises(MemoryBudgetError) as error:
            InferenceSession(model, memory_budget=1).prepare(shapes)
        return fastest, error.value.minimum_bytes

    fused = peaks()
    monkeypatch.setenv("EDGERUN_NO_FUSE_CONCAT", "1")
    plain = peaks()
    assert fused[0] <= plain[0] and fused[1] <= plain[1]


def test_bundles_keep_the_plan_they_were_compiled_with(tmp_path, monkeypatch):
    import edgerun
    from edgerun.compiler import compile_bundle
    model = branch_model()
    expected = InferenceSession(model).run(None, feed())[0]
    compile_bundle(model, tmp_path / "aliased.erb")
    monkeypatch.setenv("EDGERUN_NO_FUSE_CONCAT", "1")
    compile_bundle(model, tmp_path / "plain.erb")
    monkeypatch.delenv("EDGERUN_NO_FUSE_CONCAT")
    for name, aliased in (("aliased.erb", True), ("plain.erb", False)):
        session = edgerun.load(str(tmp_path / name))
        np.testing.assert_array_equal(session.run(None, feed())[0], expected)
        assert bool(session.compiled.aliases) == aliased
