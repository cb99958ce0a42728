"""int8 models end to end: zoo models quantised by onnxruntime's quantizer (QDQ) and in the operator form, run by
edgerun against onnxruntime on the same file (numpy and native, 1 and 2 threads, fastest and minimum-budget plans,
measured within 64 KiB of planned); the quantised pretrained MobileNetV2 on the sample photos; int8 blocks;
`edgerun quantize`."""
import numpy as np
import onnx
import pytest
from conftest import run_ort as run_ort_model
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from test_quant_ops import assert_quantised_parity

from edgerun import InferenceSession, zoo
from edgerun.cli import main as cli_main
from edgerun.errors import MemoryBudgetError
from edgerun.passes import quantize as quantize_pass
from edgerun.zoo import quantized

SLACK = 64 * 1024
RESOLUTION = 96


def run_ort(model, feeds):
    if isinstance(model, (str, bytes)):
        model = onnx.load(model) if isinstance(model, str) else onnx.load_from_string(model)
    return run_ort_model(model, feeds)


def _calibration(count=3):
    rng = np.random.default_rng(11)
    return [{"input": rng.standard_normal((1, 3, RESOLUTION, RESOLUTION)).astype(np.float32)} for _ in range(count)]


@pytest.fixture(scope="module")
def qdq_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    builders = {"mobilenet_v2": lambda: zoo.mobilenet_v2(width=0.35, resolution=RESOLUTION, batch=1),
                "mobilenet_v1": lambda: zoo.mobilenet_v1(width=0.25, resolution=RESOLUTION, batch=1),
                "shufflenet": lambda: zoo.shufflenet_v1(width=0.5, resolution=RESOLUTION, batch=1)}
    return {name: str(quantized.quantize_qdq(build(), _calibration(), folder / f"{name}.onnx"))
            for name, build in builders.items()}


@pytest.fixture(scope="module")
def qoperator_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8-qop")
    onnx.save(zoo.mobilenet_v2(width=0.35, resolution=RESOLUTION, batch=1), str(folder / "float.onnx"))
    quant_pre_process(str(folder / "float.onnx"), str(folder / "prepared.onnx"), skip_symbolic_shape=True)
    feeds = iter(_calibration())

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    quantize_static(str(folder / "prepared.onnx"), str(folder / "qop.onnx"), Reader(),
                    quant_format=QuantFormat.QOperator, per_channel=False, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QUInt8)
    return str(folder / "qop.onnx")


def _feeds():
    return {"input": np.random.default_rng(5).standard_normal((1, 3, RESOLUTION, RESOLUTION)).astype(np.float32)}


def _quantised_logits(path, values):
    """The int8 logits a QDQ model dequantises: values / scale + zero point (its last DequantizeLinear)."""
    model = onnx.load(path)
    last = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    scale, zero = inits[last.input[1]], inits[last.input[2]]
    return (np.rint(values / scale) + zero).astype(zero.dtype)


def _minimum(path, backend, threads):
    with pytest.raises(MemoryBudgetError) as error:
        InferenceSession(path, kernels_backend=backend, threads=threads, memory_budget=1)
    return error.value.minimum_bytes


@pytest.mark.parametrize("name,backend,threads", [
    ("mobilenet_v2", "numpy", 1), ("mobilenet_v2", "native", 1), ("mobilenet_v2", "native", 2),
    ("mobilenet_v1", "numpy", 1), ("shufflenet", "native", 2)])
def test_qdq_zoo_models_match_onnxruntime_with_every_plan(qdq_models, name, backend, threads):
    path = qdq_models[name]
    feeds = _feeds()
    expected = _quantised_logits(path, run_ort(path, feeds)[0])
    for budget in (None, _minimum(path, backend, threads)):
        sess = InferenceSession(path, kernels_backend=backend, threads=threads, memory_budget=budget)
        (logits,) = sess.run(None, feeds, profile=True)
        assert_quantised_parity(_quantised_logits(path, logits), expected)
        stats = sess.last_run
        assert stats.planned_peak_bytes <= (budget or stats.planned_peak_bytes)
        assert stats.measured_peak_bytes - stats.planned_peak_bytes <= SLACK


def test_the_qoperator_form_matches_onnxruntime(qoperator_model):
    feeds = _feeds()
    expected = _quantised_logits(qoperator_model, run_ort(qoperator_model, feeds)[0])
    sess = InferenceSession(qoperator_model, kernels_backend="numpy")
    (logits,) = sess.run(None, feeds, profile=True)
    assert_quantised_parity(_quantised_logits(qoperator_model, logits), expected)
    kinds = {n.op_type for n in sess._last.graph.nodes}
    assert "QInvertedResidual" in kinds and "Conv" not in kinds
    assert sess.last_run.measured_peak_bytes - sess.last_run.planned_peak_bytes <= SLACK


def test_int8_blocks_are_found_and_equal_their_unfused_steps(qdq_models, monkeypatch):
    path = qdq_models["mobilenet_v2"]
    feeds = _feeds()
    fused = InferenceSession(path, kernels_backend="numpy")
    (fused_logits,) = fused.run(None, feeds)
    kinds = [n.op_type for n in fused._last.graph.nodes]
    assert kinds.count("QInvertedResidual") == 17          # Table 2: 1+2+3+4+3+3+1 blocks, the stem in the first
    assert "QuantizeLinear" not in kinds                    # the first block quantises the float input itself
    monkeypatch.setattr(quantize_pass, "_fuse_block", lambda graph, node: False)
    unfused = InferenceSession(path, kernels_backend="numpy")
    (expected,) = unfused.run(None, feeds)
    assert "QInvertedResidual" not in [n.op_type for n in unfused._last.graph.nodes]
    np.testing.assert_array_equal(fused_logits, expected)   # exact integer sums: chunks and bands change nothing
    assert fused.plan.peak_bytes < unfused.plan.peak_bytes


def test_int8_blocks_hold_less_than_their_expanded_tensor(qdq_models):
    sess = InferenceSession(qdq_models["mobilenet_v2"], kernels_backend="numpy")
    compiled = sess._last
    for step, planned in zip(compiled.steps, compiled.problem.steps):
        if step.node.op_type != "QInvertedResidual":
            continue
        weights = compiled.constants[step.node.inputs[9]]
        out_shape = compiled.graph.value_info[step.node.outputs[0]].shape
        hidden_bytes = weights.shape[0] * out_shape[2] * out_shape[3]     # the depthwise output alone, int8
        assert sum(planned.scratch.values()) < hidden_bytes or hidden_bytes < 16 * 1024


@pytest.fixture(scope="module")
def pretrained_int8(tmp_path_factory):
    import os
    os.environ.setdefault("EDGERUN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    return zoo.mobilenet_v2(pretrained=True, quantized=True)


def test_pretrained_int8_mobilenet_v2_classifies_the_photos_as_onnxruntime_and_the_float_model(pretrained_int8):
    import skimage.data
    photos = {"chelsea": range(281, 286), "coffee": (967, 968)}
    sess = InferenceSession(pretrained_int8, kernels_backend="numpy")
    float_model = zoo.mobilenet_v2(pretrained=True).SerializeToString()
    for name, classes in photos.items():
        feeds = {"input": zoo.preprocess_imagenet(getattr(skimage.data, name)())}
        (logits,) = sess.run(None, feeds)
        ours = int(logits.argmax())
        assert ours in classes
        assert ours == int(run_ort(pretrained_int8, feeds)[0].argmax()) == int(run_ort(float_model, feeds)[0].argmax())


def test_pretrained_int8_mobilenet_v2_minimum_is_int8_bytes(pretrained_int8):
    minimum = _minimum(pretrained_int8.SerializeToString(), "numpy", 1)
    # the largest int8 tensors alive together, by hand: block 2 reads 16x112x112 and writes 24x56x56 int8 bytes
    live = 16 * 112 * 112 + 24 * 56 * 56
    assert live <= minimum <= live + 32 * 1024
    float32_minimum = 1_135_232             # README: MobileNetV2 1.0/224, float32, planned minimum
    assert minimum <= float32_minimum // 4 + 16 * 1024


def test_calibration_photos_are_the_named_ones():
    photos = quantized.calibration_photos()
    assert [name for name, _ in photos] == list(quantized.CALIBRATION_NAMES)
    assert all(photo.shape == (224, 224, 3) and photo.dtype == np.uint8 for _, photo in photos)


def test_cli_quantize_writes_a_qdq_model_both_runtimes_run(tmp_path, capsys):
    from PIL import Image
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, photo in quantized.calibration_photos()[:2]:
        Image.fromarray(photo).save(folder / f"{name}.png")
    out = tmp_path / "model.int8.onnx"
    code = cli_main(["quantize", f"mobilenet_v2:width=0.35,resolution={RESOLUTION}", "-o", str(out),
                     "--calibrate", str(folder)])
    assert code == 0 and "2 calibration input(s)" in capsys.readouterr().out
    kinds = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds
    feeds = _feeds()
    expected = _quantised_logits(str(out), run_ort(str(out), feeds)[0])
    (logits,) = InferenceSession(str(out)).run(None, feeds)
    assert_quantised_parity(_quantised_logits(str(out), logits), expected)
    assert cli_main(["quantize", f"mobilenet_v2:width=0.35,resolution={RESOLUTION}", "-o", str(out),
                     "--calibrate", "zoo"]) == 0


def test_cli_quantize_refuses_a_missing_calibration_folder(tmp_path, capsys):
    code = cli_main(["quantize", "mobilenet_v2:width=0.35,resolution=96", "-o", str(tmp_path / "m.onnx"),
                     "--calibrate", str(tmp_path / "nowhere")])
    assert code == 2 and "--calibrate" in capsys.readouterr().err
