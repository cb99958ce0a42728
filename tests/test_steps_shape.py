"""Identity, Cast, Slice, Split, Gather and Pad arena kernels (edgerun/kernels/steps_shape.py) and ReduceMean
(steps_reduce.py) against onnxruntime, through whole sessions: the step runs on the kernel, inside its plan."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arena_harness import check_against_onnxruntime, session_model

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
X_SHAPE = (2, 6, 7, 5)


def x_of(seed, shape=X_SHAPE, dtype=np.float32):
    return (np.random.default_rng(seed).standard_normal(shape) * 10).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.float16])
def test_identity_matches_onnxruntime(dtype):
    x = x_of(0, dtype=dtype)
    check_against_onnxruntime(session_model("Identity", {"x": x}), {"x": x})


@pytest.mark.parametrize("source,target", [(np.float32, np.float16), (np.float32, np.int32), (np.float32, np.float64),
                                           (np.int64, np.float32), (np.float16, np.float32), (np.float32, np.bool_)])
def test_cast_matches_onnxruntime(source, target):
    from onnx import helper
    x = x_of(1, dtype=source)
    model = session_model("Cast", {"x": x}, {"to": helper.np_dtype_to_tensor_dtype(np.dtype(target))})
    check_against_onnxruntime(model, {"x": x})


@SETTINGS
@given(starts=st.lists(st.integers(-9, 9), min_size=4, max_size=4),
       lengths=st.lists(st.integers(-9, 9), min_size=4, max_size=4),
       steps=st.lists(st.sampled_from([1, 2, 3, -1, -2]), min_size=4, max_size=4),
       axes=st.permutations([0, 1, 2, 3]), count=st.integers(1, 4), seed=st.integers(0, 99))
def test_slice_matches_onnxruntime(starts, lengths, steps, axes, count, seed):
    x = x_of(seed)
    ends = [s + n for s, n in zip(starts, lengths)]
    constants = {"starts": np.array(starts[:count]), "ends": np.array(ends[:count]),
                 "axes": np.array(list(axes)[:count]), "steps": np.array(steps[:count])}
    y_shape = np.empty(X_SHAPE)[tuple(_python_slices(constants))].shape
    if 0 in y_shape:
        return   # an empty result has no arena buffer to check
    check_against_onnxruntime(session_model("Slice", {"x": x}, constants=constants), {"x": x})


def _python_slices(c):
    index = [slice(None)] * 4
    for s, e, a, p in zip(c["starts"], c["ends"], c["axes"], c["steps"]):
        index[a] = slice(s, e, p) if (e >= 0 or p > 0) else slice(s, None if e < -X_SHAPE[a] else e, p)
    return index


def test_slice_with_attributes_before_opset_10_matches_onnxruntime():
    x = x_of(2)
    model = session_model("Slice", {"x": x}, {"starts": [1, -4], "ends": [5, 100], "axes": [1, 3]}, opset=9)
    check_against_onnxruntime(model, {"x": x})


@pytest.mark.parametrize("axis,split,opset,attrs", [
    (1, [1, 2, 3], 13, {}), (2, [7], 13, {}), (-1, [2, 3], 13, {}), (1, None, 13, {}),
    (1, None, 11, {"split": [4, 2]}), (2, None, 18, {"num_outputs": 3}), (0, None, 18, {"num_outputs": 2})])
def test_split_matches_onnxruntime(axis, split, opset, attrs):
    x = x_of(3)
    outputs = len(split) if split is not None else len(attrs.get("split", [])) or attrs.get("num_outputs", 2)
    if split is None and not attrs and axis == 1:
        outputs = 3
    constants = {"split": np.array(split, np.int64)} if split is not None else None
    model = session_model("Split", {"x": x}, {"axis": axis, **attrs}, constants=constants, opset=opset,
                          n_outputs=outputs)
    check_against_onnxruntime(model, {"x": x})


@SETTINGS
@given(axis=st.integers(-4, 3), shape=st.sampled_from([(3,), (2, 2), (1,), (4, 1, 2)]), seed=st.integers(0, 99),
       dtype=st.sampled_from([np.int64, np.int32]))
def test_gather_matches_onnxruntime(axis, shape, seed, dtype):
    x = x_of(seed)
    dim = X_SHAPE[axis]
    indices = np.random.default_rng(seed).integers(-dim, dim, shape).astype(dtype)
    model = session_model("Gather", {"x": x}, {"axis": axis}, constants={"indices": indices})
    check_against_onnxruntime(model, {"x": x})


def test_gather_out_of_range_names_the_node():
    from edgerun import InferenceSession
    from edgerun.errors import InvalidModelError
    x = x_of(0)
    indices = np.array([[0, 6]], np.int64)
    model = session_model("Gather", {"x": x, "i": indices}, {"axis": 1})
    sess = InferenceSession(model, kernels_backend="numpy")
    with pytest.raises(InvalidModelError, match="gather_under_test.*out of range"):
        sess.run(None, {"x": x, "i": indices})


@SETTINGS
@given(pads=st.lists(st.integers(-2, 4), min_size=6, max_size=6),
       mode=st.sampled_from(["constant", "edge", "reflect", "wrap"]), value=st.floats(-3, 3),
       seed=st.integers(0, 99))
def test_pad_matches_onnxruntime(pads, mode, value, seed):
    x = x_of(seed)
    dims = X_SHAPE[1:]
    begin, end = pads[:3], pads[3:]
    if mode != "constant":   # onnxruntime crops only in constant mode and reflects at most dim - 1
        reach = [d - 1 if mode == "reflect" else d for d in dims]
        begin, end = ([min(abs(p), r) for p, r in zip(side, reach)] for side in (begin, end))
    constants = {"pads": np.array([0] + begin + [0] + end, np.int64), "value": np.array(value, np.float32)}
    check_against_onnxruntime(session_model("Pad", {"x": x}, {"mode": mode}, constants=constants, opset=19),
                              {"x": x})


@pytest.mark.parametrize("mode", ["reflect", "edge", "wrap", "constant"])
def test_pad_wider_than_one_reflection_matches_numpy(mode):
    """Wider pads repeat the reflection (numpy's rule, which edgerun's reference op follows; onnxruntime
    refuses them): they run the reference op inside the kernel, still into the arena output."""
    from edgerun import InferenceSession
    x = x_of(4, shape=(1, 2, 3, 3))
    pads = [0, 0, 5, 1, 0, 0, 4, 7]
    model = session_model("Pad", {"x": x}, {"mode": mode}, constants={"pads": np.array(pads, np.int64)}, opset=19)
    sess = InferenceSession(model, kernels_backend="numpy")
    (got,) = sess.run(None, {"x": x})
    assert [s.kind for s in sess.compiled.steps] == ["kernel"]
    np.testing.assert_array_equal(got, np.pad(x, [(0, 0), (0, 0), (5, 4), (1, 7)], mode=mode))


def test_pad_with_attributes_before_opset_11_matches_onnxruntime():
    x = x_of(5)
    model = session_model("Pad", {"x": x}, {"mode": "constant", "pads": [0, 1, 2, 0, 0, 0, 1, 3], "value": 1.5},
                          opset=10)
    check_against_onnxruntime(model, {"x": x})


@SETTINGS
@given(axes=st.lists(st.integers(-4, 3), min_size=0, max_size=3, unique_by=lambda a: a % 4),
       keepdims=st.sampled_from([0, 1]), seed=st.integers(0, 99), as_input=st.booleans())
def test_reduce_mean_matches_onnxruntime(axes, keepdims, seed, as_input):
    x = x_of(seed)
    if as_input:
        constants = {"axes": np.array(axes, np.int64)} if axes else None
        model = session_model("ReduceMean", {"x": x}, {"keepdims": keepdims}, constants=constants, opset=18)
    else:
        attrs = {"keepdims": keepdims, **({"axes": axes} if axes else {})}
        model = session_model("ReduceMean", {"x": x}, attrs, opset=13)
    check_against_onnxruntime(model, {"x": x})


@pytest.mark.parametrize("opset,with_mask", [(7, False), (12, True), (13, True), (13, False)])
def test_dropout_matches_onnxruntime(opset, with_mask):
    x = x_of(6)
    model = session_model("Dropout", {"x": x}, {"ratio": 0.3} if opset < 12 else {}, opset=opset,
                          n_outputs=2 if with_mask else 1)
    check_against_onnxruntime(model, {"x": x})


def test_dropout_in_training_mode_names_the_node():
    from edgerun import InferenceSession
    from edgerun.errors import InvalidModelError
    x = x_of(7)
    training = np.array(True)
    model = session_model("Dropout", {"x": x, "ratio": np.array(0.5, np.float32), "training": training}, opset=13)
    with pytest.raises(InvalidModelError, match="dropout_under_test.*training_mode"):
        sess = InferenceSession(model, kernels_backend="numpy", optimize_graph=False)
        sess.run(None, {"x": x, "ratio": np.array(0.5, np.float32), "training": training})
