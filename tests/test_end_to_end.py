"""Whole models: edgerun against onnxruntime, optimised and unoptimised, numpy and native kernels."""
import numpy as np
import onnx
import pytest

from conftest import assert_close_to_ort, run_ort
from edgerun import InferenceSession, zoo

SMALL_MODELS = {
    "mobilenet_v2_035_96": lambda: zoo.mobilenet_v2(width=0.35, resolution=96),
    "mobilenet_v2_100_128": lambda: zoo.mobilenet_v2(width=1.0, resolution=128),
    "mobilenet_v1_050_128": lambda: zoo.mobilenet_v1(width=0.5, resolution=128),
    "shufflenet_v1_g3_128": lambda: zoo.shufflenet_v1(groups=3, width=1.0, resolution=128),
    "mobilenet_v3_small_like_128": lambda: zoo.mobilenet_v3_small_like(resolution=128),
}

_cache = {}


def small_model(name):
    if name not in _cache:
        _cache[name] = SMALL_MODELS[name]()
    return _cache[name]


def _input_for(model, batch, rng):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [batch] + [d.dim_value for d in dims[1:]]
    return {model.graph.input[0].name: rng.standard_normal(shape).astype(np.float32)}


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
@pytest.mark.parametrize("optimize_graph", [True, False])
def test_zoo_model_matches_onnxruntime(name, optimize_graph, rng):
    model = small_model(name)
    feeds = _input_for(model, 2, rng)
    expected = run_ort(model, feeds)
    actual = InferenceSession(model, optimize_graph=optimize_graph, kernels_backend="numpy").run(None, feeds)
    for a, e in zip(actual, expected):
        assert_close_to_ort(a, e)
        assert (a.argmax(axis=-1) == e.argmax(axis=-1)).all()


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_zoo_model_native_kernels_match_onnxruntime(name, rng):
    from edgerun import kernels
    if not kernels.native_available():
        pytest.fail("the native kernels did not build; the install should have compiled them")
    model = small_model(name)
    feeds = _input_for(model, 1, rng)
    expected = run_ort(model, feeds)
    actual = InferenceSession(model, kernels_backend="native").run(None, feeds)
    assert_close_to_ort(actual[0], expected[0])


def test_optimised_graph_fuses_every_mobilenet_v2_block():
    sess = InferenceSession(small_model("mobilenet_v2_035_96"))
    sess.prepare({"input": (1, 3, 96, 96)})
    kinds = [n.op_type for n in sess.graph.nodes]
    # 17 inverted-residual blocks (Table 2: 1+2+3+4+3+3+1), the first one with the stem fused in
    assert kinds.count("InvertedResidual") == 17
    assert "BatchNormalization" not in kinds and "Clip" not in kinds and "Dropout" not in kinds


@pytest.fixture(scope="module")
def pretrained():
    return zoo.mobilenet_v2(pretrained=True)


def _photo(name):
    import skimage.data
    return zoo.preprocess_imagenet(getattr(skimage.data, name)())


@pytest.mark.parametrize("photo,classes", [("chelsea", range(281, 286)), ("coffee", (967, 968))])
def test_pretrained_mobilenet_v2_classifies_real_photos(pretrained, photo, classes):
    x = _photo(photo)
    feeds = {"input": x}
    logits = InferenceSession(pretrained).run(None, feeds)[0]
    expected = run_ort(pretrained, feeds)[0]
    assert int(logits.argmax()) in classes
    assert_close_to_ort(logits, expected)
    assert set(np.argsort(logits[0])[-5:]) == set(np.argsort(expected[0])[-5:])


def test_dynamic_batch_is_resolved_per_input_shape(rng):
    model = small_model("mobilenet_v2_035_96")
    sess = InferenceSession(model)
    for batch in (1, 3):
        feeds = _input_for(model, batch, rng)
        assert_close_to_ort(sess.run(None, feeds)[0], run_ort(model, feeds)[0])
    assert sess.plan.peak_bytes > 0


def _with_symbolic_spatial_dims(model):
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    dims = dynamic.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    return dynamic


def test_dynamic_height_and_width_are_resolved_per_input_shape(rng):
    model = _with_symbolic_spatial_dims(small_model("mobilenet_v2_035_96"))
    sess = InferenceSession(model)
    peaks = []
    for size in (96, 128, 96):
        feeds = {"input": rng.standard_normal((1, 3, size, size)).astype(np.float32)}
        assert_close_to_ort(sess.run(None, feeds)[0], run_ort(model, feeds)[0])
        peaks.append(sess.plan.peak_bytes)
    assert peaks[0] == peaks[2] < peaks[1]   # one plan per input shape, found again from the cache


def test_multi_input_multi_output_graph_matches_onnxruntime(rng):
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["a", "w"], ["ca"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "w"], ["cb"], pads=[1, 1, 1, 1], strides=[1, 1]),
             helper.make_node("Add", ["ca", "cb"], ["sum"]),
             helper.make_node("Relu", ["sum"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pooled"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3, 8, 8]) for n in ("a", "b")]
    outputs = [helper.make_tensor_value_info("relu", TensorProto.FLOAT, [2, 4, 8, 8]),
               helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [2, 4, 1, 1])]
    model = helper.make_model(helper.make_graph(nodes, "two_in_two_out", inputs, outputs, [w]),
                              opset_imports=[helper.make_opsetid("", 13)])
    feeds = {n: rng.standard_normal((2, 3, 8, 8)).astype(np.float32) for n in ("a", "b")}
    expected = run_ort(model, feeds)
    for backend in ("numpy", "native"):
        actual = InferenceSession(model, kernels_backend=backend).run(None, feeds)
        for a, e in zip(actual, expected):
            assert_close_to_ort(a, e)
    pooled_only = InferenceSession(model).run(["pooled"], feeds)
    assert len(pooled_only) == 1 and pooled_only[0].shape == (2, 4, 1, 1)
