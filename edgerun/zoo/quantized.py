"""int8 models: a float ONNX model quantised by onnxruntime's own quantizer (a standard QDQ model that
edgerun and onnxruntime both run), calibrated on photos preprocessed exactly as `edgerun run` feeds them.

- calibration_photos(): the bundled calibration photos, (name, (224, 224, 3) uint8 RGB): scikit-image's
  "astronaut", "rocket" and the left view of "stereo_motorcycle", square-cropped to 224 x 224
  (calibration_images.npz; none of them is a photo the tests classify).
- quantize_qdq(model, feeds, path): onnxruntime.quantization.quant_pre_process (folds BatchNormalization
  into the convs) then quantize_static in QDQ format, int8 activations and per-channel int8 weights.
- quantized_pretrained(model, resolution): the quantised pretrained MobileNetV2, cached in
  $EDGERUN_CACHE_DIR (default ~/.cache/edgerun) under a key of the float model's bytes and onnxruntime's
  version.

onnxruntime is an optional dependency: it is imported only here, when a model is quantised.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgerun.errors import EdgerunError
from edgerun.zoo.images import PRESETS, preprocess

CALIBRATION_FILE = Path(__file__).resolve().parent / "calibration_images.npz"
CALIBRATION_NAMES = ("astronaut", "rocket", "motorcycle")


class QuantizationError(EdgerunError):
    """The model could not be quantised (onnxruntime's quantizer missing or refusing it)."""


def calibration_photos() -> list[tuple[str, np.ndarray]]:
    with np.load(CALIBRATION_FILE, allow_pickle=False) as bundled:
        return [(name, bundled[name]) for name in CALIBRATION_NAMES]


def photo_feeds(photos, input_name: str, height: int, width: int, settings=PRESETS["imagenet"]) -> list[dict]:
    """One feed per photo, preprocessed as `edgerun run` does (default: the imagenet preset)."""
    return [{input_name: preprocess(photo, height, width, settings)} for photo in photos]


def _quantizer():
    try:
        from onnxruntime import quantization
        from onnxruntime.quantization import shape_inference
    except ImportError:
        raise QuantizationError("quantising a model needs onnxruntime (pip install onnxruntime)") from None
    return quantization, shape_inference


def quantize_qdq(model, feeds: list[dict], path, *, per_channel: bool = True) -> Path:
    """Write the QDQ int8 model of `model` (a ModelProto or a path) calibrated on `feeds` to `path`."""
    if not feeds:
        raise QuantizationError("calibration needs at least one input")
    quantization, shape_inference = _quantizer()
    path = Path(path)

    class Feeds(quantization.CalibrationDataReader):
        def __init__(self):
            self._rest = iter(feeds)

        def get_next(self):
            return next(self._rest, None)

    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "float.onnx"
        if isinstance(model, onnx.ModelProto):
            onnx.save(model, str(source))
        else:
            source = Path(model)
        prepared = Path(work) / "prepared.onnx"
        try:
            shape_inference.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantization.quantize_static(str(prepared), str(path), Feeds(), quant_format=quantization.QuantFormat.QDQ,
                                         per_channel=per_channel, activation_type=quantization.QuantType.QInt8,
                                         weight_type=quantization.QuantType.QInt8,
                                         calibrate_method=quantization.CalibrationMethod.MinMax)
        except (ValueError, RuntimeError, onnx.checker.ValidationError) as exc:
            raise QuantizationError(f"onnxruntime's quantizer refused the model: {exc}") from None
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("EDGERUN_CACHE_DIR") or Path.home() / ".cache" / "edgerun")


def quantized_pretrained(model: onnx.ModelProto, resolution: int) -> onnx.ModelProto:
    """The int8 QDQ model of the pretrained float `model`, calibrated on the bundled photos; cached."""
    import onnxruntime
    key = hashlib.sha256(model.SerializeToString() + onnxruntime.__version__.encode()).hexdigest()[:16]
    path = cache_dir() / f"mobilenet_v2_1.0_{resolution}_pretrained_int8_{key}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        feeds = photo_feeds([photo for _, photo in calibration_photos()], model.graph.input[0].name,
                            resolution, resolution)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        quantize_qdq(model, feeds, partial)
        os.replace(partial, path)
    quantized = onnx.load(str(path))
    quantized.graph.name = f"mobilenet_v2_1_{resolution}_pretrained_int8"
    return quantized
