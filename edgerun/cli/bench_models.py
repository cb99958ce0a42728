"""The models `edgerun bench` times: zoo names, .onnx paths, and `light:NAME`, a CNN of the onnx wheel's
backend/test/data/light folder (AlexNet, DenseNet121, Inception v1/v2, ResNet50, ShuffleNet, SqueezeNet,
VGG19, ZFNet512) given seeded random weights of the same shapes: the weights they ship are constant and
give constant outputs, which time and compare nothing useful.

Random weights: tensors of rank >= 2 are standard normal scaled by sqrt(2 / fan-in) (He), vectors (biases,
BatchNorm statistics) uniform in [0.5, 1.5] so that variances stay positive; the ConstantOfShape nodes the
light models build their weights with become initializers. A final Softmax is dropped from the outputs'
comparison by making its input an output too (random logits saturate a Softmax).
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.backend.test
from onnx import numpy_helper

from edgerun.models import UsageError, resolve_model

LIGHT_PREFIX = "light:"
LIGHT_MODELS = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
                "squeezenet", "vgg19", "zfnet512")
ZOO_BENCH_MODELS = ("mobilenet_v2_pretrained", "mobilenet_v1", "shufflenet_v1", "mobilenet_v3_small_like")
DEFAULT_MODELS = ZOO_BENCH_MODELS + tuple(LIGHT_PREFIX + name for name in LIGHT_MODELS)
WEIGHT_SEED = 0


def light_folder() -> str:
    return os.path.join(os.path.dirname(onnx.backend.test.__file__), "data", "light")


def light_path(name: str) -> str:
    if name not in LIGHT_MODELS:
        raise UsageError(f"MODEL {LIGHT_PREFIX}{name!r}: the light models are {', '.join(LIGHT_MODELS)}")
    path = os.path.join(light_folder(), f"light_{name}.onnx")
    if not os.path.isfile(path):
        raise UsageError(f"MODEL {LIGHT_PREFIX}{name}: {path} is not in this onnx installation")
    return path


def _random_values(rng, shape) -> np.ndarray:
    if len(shape) >= 2:
        fan_in = max(1, int(np.prod(shape[1:])))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)


def with_random_weights(model, seed: int = WEIGHT_SEED):
    """A copy of the ONNX model with seeded random float weights of the same shapes."""
    rng = np.random.default_rng(seed)
    randomized = onnx.ModelProto()
    randomized.CopyFrom(model)
    graph = randomized.graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for tensor in graph.initializer:
        array = initializers[tensor.name]
        if array.dtype == np.float32 and array.size:
            tensor.CopyFrom(numpy_helper.from_array(_random_values(rng, array.shape), tensor.name))
    for node in list(graph.node):
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if (node.op_type == "ConstantOfShape" and node.input[0] in initializers
                and value is not None and value.data_type == onnx.TensorProto.FLOAT):
            shape = tuple(int(d) for d in initializers[node.input[0]])
            graph.initializer.append(numpy_helper.from_array(_random_values(rng, shape), node.output[0]))
            if randomized.ir_version < 4:   # initializers must also be graph inputs then
                graph.input.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT,
                                                                      shape))
            graph.node.remove(node)
    return _with_logits_output(randomized)


def _with_logits_output(model):
    last = model.graph.node[-1]
    if last.op_type != "Softmax":
        return model
    info = onnx.ValueInfoProto()
    info.CopyFrom(next(v for v in model.graph.output if v.name == last.output[0]))
    info.name = last.input[0]
    model.graph.output.append(info)
    return model


def resolve_bench_model(spec: str):
    """(model, label) for a zoo name, an .onnx path or light:NAME."""
    if spec.startswith(LIGHT_PREFIX):
        name = spec[len(LIGHT_PREFIX):]
        return with_random_weights(onnx.load(light_path(name))), spec
    return resolve_model(spec)


def split_model_list(text: str) -> list[str]:
    """`--models a,b,light:c` (or `all` / `zoo` / `light`) -> the model specs."""
    names = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if item == "all":
            names += DEFAULT_MODELS
        elif item == "zoo":
            names += ZOO_BENCH_MODELS
        elif item == "light":
            names += [LIGHT_PREFIX + name for name in LIGHT_MODELS]
        else:
            names.append(item)
    return names
