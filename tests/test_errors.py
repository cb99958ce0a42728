"""Every error class with real bad input; messages name the culprit."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgerun
from edgerun import (InferenceSession, InvalidInputError, ModelLoadError, UnsupportedOperatorError)
from edgerun.errors import EdgerunError, InvalidOptionError


def tiny_model(op="Relu", opset=13):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    node = helper.make_node(op, ["x"], ["y"], name="the_node")
    graph = helper.make_graph([node], "tiny", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_errors_share_one_base_class():
    from edgerun.errors import ResourceLimitError
    for cls in (ModelLoadError, UnsupportedOperatorError, InvalidInputError, InvalidOptionError,
                edgerun.MemoryBudgetError, ResourceLimitError):
        assert issubclass(cls, EdgerunError)


def test_truncated_file_is_a_model_load_error(tmp_path):
    data = tiny_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated|malformed|not a valid"):
        InferenceSession(str(path))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        InferenceSession(str(tmp_path / "nope.onnx"))
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        InferenceSession(str(tmp_path / "empty.onnx"))


def test_garbage_bytes():
    with pytest.raises(ModelLoadError):
        InferenceSession(b"\x00\xffthis is not onnx" * 10)


def test_unsupported_opset():
    with pytest.raises(ModelLoadError, match="opset 5"):
        InferenceSession(tiny_model(opset=5))


def test_unknown_operator_names_node_op_domain_and_opset():
    model = tiny_model(op="Relu")
    model.graph.node[0].op_type = "FancyOp"
    with pytest.raises(UnsupportedOperatorError) as info:
        InferenceSession(model)
    message = str(info.value)
    assert "the_node" in message and "FancyOp" in message and "opset 13" in message
    assert "Conv" in message  # lists the supported ops


@pytest.mark.parametrize("feed,needle", [
    ({"z": np.zeros((1, 2, 4, 4), np.float32)}, "unknown input"),
    ({}, "missing input"),
    ({"x": np.zeros((1, 2, 4), np.float32)}, "rank"),
    ({"x": np.zeros((1, 3, 4, 4), np.float32)}, "dimension 1 must be 2"),
    ({"x": np.zeros((1, 2, 4, 4), np.float64)}, "dtype float32"),
])
def test_invalid_inputs_say_what_was_expected(feed, needle):
    sess = InferenceSession(tiny_model())
    with pytest.raises(InvalidInputError, match=needle):
        sess.run(None, feed)


def test_unknown_output_name():
    with pytest.raises(InvalidInputError, match="unknown output"):
        InferenceSession(tiny_model()).run(["nope"], {"x": np.zeros((1, 2, 4, 4), np.float32)})


@pytest.mark.parametrize("budget", ["lots", "-5MB", 0, "12 parsecs"])
def test_bad_budget_option(budget):
    with pytest.raises(InvalidOptionError, match="memory_budget"):
        InferenceSession(tiny_model(), memory_budget=budget)


def model_with_external_weights(location: str, offset: int) -> onnx.ModelProto:
    """y = x + w, with w's 8 floats stored in the file `location` at `offset`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])
    w = numpy_helper.from_array(np.zeros(8, np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    for key, value in (("location", location), ("offset", str(offset)), ("length", "32")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.ones(8, np.float32).tobytes())
    path = model_dir / "m.onnx"
    path.write_bytes(model_with_external_weights("../secret.bin", 0).SerializeToString())
    with pytest.raises(ModelLoadError, match="outside|not a file inside"):
        InferenceSession(str(path))


def test_external_data_inside_the_folder_loads(tmp_path):
    weights = np.arange(8, dtype=np.float32)
    (tmp_path / "w.bin").write_bytes(b"pad!" + weights.tobytes())
    path = tmp_path / "m.onnx"
    path.write_bytes(model_with_external_weights("w.bin", 4).SerializeToString())
    out = InferenceSession(str(path)).run(None, {"x": np.ones(8, np.float32)})[0]
    np.testing.assert_array_equal(out, weights + 1)


def test_caller_arrays_are_not_modified():
    feed = np.linspace(-1, 1, 32, dtype=np.float32).reshape(1, 2, 4, 4)
    before = feed.copy()
    InferenceSession(tiny_model()).run(None, {"x": feed})
    np.testing.assert_array_equal(feed, before)
