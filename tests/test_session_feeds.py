"""Feeds are checked on the caller's array as given, before anything is copied or planned (issue 10, item 5):
string graph inputs, broadcast and strided views, and inputs whose activations cannot fit in memory all
end in an InvalidInputError that names the input, with nothing of their size allocated."""
import tracemalloc

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgerun import InferenceSession, InvalidInputError
from edgerun.errors import ModelLoadError, ResourceLimitError
from edgerun.limits import max_bytes

HUGE = (1, 3, 50000, 50000)    # 30,000,000,000 bytes of float32


def model_bytes(nodes, inputs, outputs) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def relu_sigmoid(shape) -> bytes:
    return model_bytes([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["r"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])


def string_identity(shape) -> bytes:
    return model_bytes([helper.make_node("Identity", ["s"], ["y"])],
                       [helper.make_tensor_value_info("s", TensorProto.STRING, shape)],
                       [helper.make_tensor_value_info("y", TensorProto.STRING, shape)])


def peak_bytes_during(call) -> tuple[int, Exception | None]:
    """tracemalloc's peak above the start while `call` runs, and what it raised."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        error = None
        try:
            call()
        except Exception as exc:   # returned to the test, which checks its type
            error = exc
        return tracemalloc.get_traced_memory()[1] - base, error
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("shape", [[2, 2], ["n"]], ids=["static", "dynamic"])
def test_a_string_graph_input_is_refused_by_name(shape):
    with pytest.raises(ModelLoadError, match=r"'s': element type STRING is not supported"):
        InferenceSession(string_identity(shape))


def test_a_huge_broadcast_input_on_a_dynamic_model_is_refused_before_any_copy():
    session = InferenceSession(relu_sigmoid([1, 3, "h", "w"]))
    huge = np.broadcast_to(np.float32(1.0), HUGE)
    assert 30_000_000_000 > max_bytes()   # the premise: this machine cannot hold the copy
    peak, error = peak_bytes_during(lambda: session.run(None, {"x": huge}))
    assert isinstance(error, InvalidInputError), error
    assert "input 'x'" in str(error) and "30,000,000,000 bytes" in str(error)
    assert peak < 1_000_000


def test_planning_a_huge_input_shape_is_refused_before_allocating():
    session = InferenceSession(relu_sigmoid([1, 3, "h", "w"]))
    peak, error = peak_bytes_during(lambda: session.prepare({"x": HUGE}))
    assert isinstance(error, ResourceLimitError), error
    assert "30,000,000,000 bytes" in str(error) and "output 'r' of shape [1, 3, 50000, 50000]" in str(error)
    assert peak < 1_000_000


def test_a_broadcast_input_of_the_wrong_shape_is_refused_before_any_copy():
    session = InferenceSession(relu_sigmoid([1, 3, 8, 8]))
    wrong = np.broadcast_to(np.float32(1.0), (1, 3, 50000, 8))
    peak, error = peak_bytes_during(lambda: session.run(None, {"x": wrong}))
    assert isinstance(error, InvalidInputError) and "dimension 2 must be 8" in str(error), error
    assert peak < 100_000


def test_broadcast_and_strided_inputs_that_fit_run_like_their_copies():
    session = InferenceSession(relu_sigmoid([1, 3, "h", "w"]))
    rng = np.random.default_rng(5)
    row = rng.standard_normal((1, 3, 1, 16)).astype(np.float32)
    broadcast = np.broadcast_to(row, (1, 3, 12, 16))
    strided = rng.standard_normal((1, 3, 24, 32)).astype(np.float32)[:, :, ::2, ::2]
    for feed in (broadcast, strided):
        assert not feed.flags.c_contiguous
        expected = 1 / (1 + np.exp(-np.maximum(feed, 0)))
        np.testing.assert_allclose(session.run(None, {"x": feed})[0], expected, rtol=1e-6)


def test_the_plan_made_at_construction_is_the_one_the_first_run_uses():
    """A static-shape session plans once: the first run must not compile the model a second time
    (that cost the first run a full compile and held two copies of the packed weights)."""
    from edgerun import zoo
    session = InferenceSession(zoo.mobilenet_v2(0.35, 96, batch=1), memory_budget="300KB")
    plan, compiled = session.plan, session._last
    x = np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype(np.float32)
    session.run(None, {"input": x})
    assert session._last is compiled and session.plan is plan
    assert list(session._compiled.values()) == [compiled]
