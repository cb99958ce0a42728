"""ImageNet class names, a bundled sample photo and image preprocessing (numpy only): ImageNet's
(torchvision's) standard one, and the presets `edgerun run --preprocess` offers."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgerun.errors import InvalidInputError

_HERE = Path(__file__).resolve().parent
LABELS_FILE = _HERE / "imagenet_classes.txt"
SAMPLE_FILE = _HERE / "sample_chelsea.npy"

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)   # BVLC's ILSVRC-2012 mean image, per channel, rounded
RESIZE_RATIO = 256 / 224                   # shorter side before a center crop, as torchvision's ImageNet eval


@functools.lru_cache(maxsize=1)
def _labels() -> tuple[str, ...]:
    lines = LABELS_FILE.read_text(encoding="utf-8").splitlines()
    names = tuple(line for line in lines if line and not line.startswith("#"))
    if len(names) != 1000:
        raise RuntimeError(f"{LABELS_FILE} holds {len(names)} class names, expected 1000")
    return names


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, index i naming class i."""
    return list(_labels())


def sample_image() -> np.ndarray:
    """Chelsea the cat (scikit-image's sample photo), (224, 224, 3) uint8 RGB."""
    image = np.load(SAMPLE_FILE, allow_pickle=False)
    if image.shape != (224, 224, 3) or image.dtype != np.uint8:
        raise RuntimeError(f"{SAMPLE_FILE} holds a {image.dtype} array of shape {image.shape}")
    return image


def _resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix of a triangle (bilinear) filter, widened when downscaling
    so that every input pixel contributes (antialiasing, as PIL's bilinear resize does)."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    centers = (np.arange(out_size) + 0.5) * scale
    positions = np.arange(in_size) + 0.5
    distance = np.abs(positions[None, :] - centers[:, None]) / support
    weights = np.clip(1.0 - distance, 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an (H, W, C) image to (height, width, C) float32 with an antialiased bilinear filter."""
    rows = _resize_weights(image.shape[0], height).astype(np.float32)
    cols = _resize_weights(image.shape[1], width).astype(np.float32)
    x = image.astype(np.float32)
    return np.einsum("ph,hwc,qw->pqc", rows, x, cols, optimize=True)


def _check_photo(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidInputError(f"expected an (H, W, 3) uint8 RGB image, got a {image.dtype} array "
                                f"of shape {image.shape}")
    if min(image.shape[:2]) < 1:
        raise InvalidInputError(f"image of shape {image.shape} is empty")
    return image


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so that the shorter side is `size` (the longer one scaled and truncated, as torchvision)."""
    h, w = image.shape[:2]
    if h <= w:
        return resize_bilinear(image, size, max(1, int(size * w / h)))
    return resize_bilinear(image, max(1, int(size * h / w)), size)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if h < size or w < size:
        raise InvalidInputError(f"cannot crop {size}x{size} from an image of {h}x{w}")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image[top:top + size, left:left + size]


def preprocess_imagenet(image_uint8_hwc, resize: int = 256, crop: int = 224) -> np.ndarray:
    """Resize the shorter side to 256, center-crop 224, scale to [0, 1], normalise with the
    ImageNet mean and std: returns float32 (1, 3, crop, crop)."""
    image = _check_photo(image_uint8_hwc)
    x = center_crop(resize_shorter_side(image, resize), crop) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def make_square_thumbnail(image_uint8_hwc, size: int = 224) -> np.ndarray:
    """Center-crop the largest square and resize it to size x size, uint8 (how the sample was made)."""
    image = _check_photo(image_uint8_hwc)
    side = min(image.shape[:2])
    resized = resize_bilinear(center_crop(image, side), size, size)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


# ================================================================ configurable preprocessing
@dataclass(frozen=True)
class Preprocessing:
    """How a photo becomes a (1, 3, H, W) float32 tensor: resize the shorter side to `resize` (default
    round(max(H, W) * 256 / 224)), center-crop H x W, put the channels in `channel_order`, scale pixel values
    to 0..`scale`, subtract `mean` and divide by `std` (both given in the tensor's channel order)."""

    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (1.0, 1.0, 1.0)
    channel_order: str = "rgb"
    scale: float = 255.0
    resize: int | None = None

    def as_dict(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "channel_order": self.channel_order, "scale": float(self.scale), "resize": self.resize}


PRESETS = {
    # torchvision's ImageNet models (the zoo's MobileNetV2): RGB, 0..1, ImageNet mean and std
    "imagenet": Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "rgb", 1.0),
    # Caffe-trained models (bvlc_alexnet, zfnet512, googlenet, ... in onnx's backend test data): BGR, 0..255,
    # the ILSVRC mean subtracted, no division
    "caffe": Preprocessing(CAFFE_MEAN_BGR, (1.0, 1.0, 1.0), "bgr", 255.0),
    # resized and cropped pixel values only: RGB, 0..255
    "raw": Preprocessing((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "rgb", 255.0),
}


def preprocess(image_uint8_hwc, height: int, width: int, settings: Preprocessing = PRESETS["imagenet"]) -> np.ndarray:
    """The (1, 3, height, width) float32 tensor `settings` make of an (H, W, 3) uint8 RGB photo."""
    image = _check_photo(image_uint8_hwc)
    resize = settings.resize or round(max(height, width) * RESIZE_RATIO)
    x = _center_crop_hw(resize_shorter_side(image, resize), height, width)
    if settings.channel_order == "bgr":
        x = x[:, :, ::-1]
    if settings.scale != 255:
        x = x / 255.0 if settings.scale == 1 else x / 255.0 * np.float32(settings.scale)
    x = (x - np.asarray(settings.mean, dtype=np.float32)) / np.asarray(settings.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def _center_crop_hw(image: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    if h < height or w < width:
        raise InvalidInputError(f"cannot crop {height}x{width} from an image resized to {h}x{w}: "
                                f"resize the shorter side to at least {max(height, width)}")
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return image[top:top + height, left:left + width]

