"""What `edgerun run` feeds a model: the bundled photo, image files (preprocessed by a preset and overrides),
.npy/.npz arrays; several --input files make a batch, one file per row (or per run when the model's batch
dimension is fixed)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgerun.errors import InvalidInputError
from edgerun.models import UsageError, batch_one_shapes, is_static, numpy_dtype
from edgerun.zoo.images import PRESETS, Preprocessing, preprocess, sample_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MAX_IMAGE_PIXELS = 100_000_000   # Pillow's decompression-bomb guard is raised at 2x its default of ~89 MP
SAMPLE_SOURCE = "bundled sample photo (chelsea)"
PREPROCESS_OPTIONS = ("resize", "mean", "std", "channel_order", "scale")


@dataclass
class Feeds:
    """One run's feeds and the source of each batch row ("cat.jpg", "x.npz row 1", ...)."""

    arrays: dict
    sources: list
    from_images: bool = False   # preprocessed photos (not arrays or random data)


# ================================================================ preprocessing options
def preprocessing_from_args(args) -> Preprocessing:
    """The --preprocess preset with --resize/--mean/--std/--channel-order/--scale applied over it."""
    settings = PRESETS[args.preprocess]
    overrides = {name: getattr(args, name) for name in PREPROCESS_OPTIONS if getattr(args, name) is not None}
    return replace(settings, **overrides)


def explicit_preprocessing(args) -> list[str]:
    """The preprocessing options the user set (they only make sense for images)."""
    names = [f"--{name.replace('_', '-')}" for name in PREPROCESS_OPTIONS if getattr(args, name) is not None]
    return (["--preprocess"] if args.preprocess_given else []) + names


def three_floats(option: str, nonzero: bool = False):
    def convert(text: str) -> tuple:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != 3 or not all(math.isfinite(v) for v in values) or (nonzero and 0.0 in values):
            need = "three finite non-zero numbers" if nonzero else "three finite numbers"
            raise UsageError(f"{option} {text!r}: expected {need} separated by commas, one per channel "
                             f"in the tensor's channel order, e.g. 0.485,0.456,0.406")
        return values
    return convert


def positive_float(option: str):
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{option} {text!r}: expected a positive number, e.g. 1 (pixels 0..1) or 255 (0..255)")
        return value
    return convert


# ================================================================ the image input of a model
def image_input(sess):
    """(name, height, width) of the single (N, 3, H, W) float input of an image model, else None."""
    inputs = sess.get_inputs()
    if len(inputs) != 1 or inputs[0].shape is None or numpy_dtype(inputs[0].type) != np.float32:
        return None
    shape = inputs[0].shape
    if len(shape) != 4:
        return None
    if (not is_static(shape[0]) or shape[0] == 1) and shape[1] == 3 and is_static(shape[2]) and is_static(shape[3]):
        return inputs[0].name, shape[2], shape[3]
    return None


def _read_image(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise InvalidInputError(f"--input {path}: reading image files needs Pillow (pip install 'edgerun[image]'); "
                                f"or give the preprocessed tensor as .npy/.npz") from None
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise InvalidInputError(f"--input {path}: {image.width}x{image.height} pixels, more than the "
                                        f"{MAX_IMAGE_PIXELS:,} edgerun reads")
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInputError(f"--input {path}: not a readable image ({exc})") from None


def _image_feeds(sess, path: Path, photo: np.ndarray, settings: Preprocessing) -> dict:
    found = image_input(sess)
    if found is None:
        raise InvalidInputError(f"--input {path}: an image can only feed a model with one (N, 3, H, W) float "
                                f"input; give this model's inputs as .npy/.npz")
    name, height, width = found
    return {name: preprocess(photo, height, width, settings)}


# ================================================================ arrays
def _load_arrays(path: Path) -> dict | np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidInputError(f"--input {path}: cannot read it as {path.suffix} ({exc})") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        return {key: loaded[key] for key in loaded.files}


def _arrays_by_input(path: Path, loaded, names: list[str]) -> dict:
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise InvalidInputError(f"--input {path}: the model has inputs {names}; give an .npz holding "
                                    f"one array per input name")
        return {names[0]: loaded}
    if len(names) == 1 and len(loaded) == 1:
        return {names[0]: next(iter(loaded.values()))}
    missing = sorted(set(names) - set(loaded))
    if missing:
        raise InvalidInputError(f"--input {path}: no array for input(s) {missing} (the file holds {sorted(loaded)})")
    return {name: loaded[name] for name in names}


def _check_against_model(path: Path, feeds: dict, sess) -> dict:
    for arg in sess.get_inputs():
        array = feeds[arg.name]
        want = numpy_dtype(arg.type)
        if array.dtype != want:
            raise InvalidInputError(f"--input {path}: input {arg.name!r} must be {want.name}, "
                                    f"the file holds {array.dtype.name}")
        if arg.shape is None:
            continue
        expected = arg.shape
        mismatch = len(expected) != array.ndim or any(
            is_static(d) and d != got for d, got in zip(expected, array.shape))
        if mismatch:
            raise InvalidInputError(f"--input {path}: input {arg.name!r} expects shape {list(expected)}, "
                                    f"the file holds {list(array.shape)}")
    return feeds


# ================================================================ files -> feeds
def _existing_file(path_text: str) -> Path:
    path = Path(path_text)
    if path.is_dir():
        raise InvalidInputError(f"--input {path}: is a directory; give a file (an image, .npy or .npz)")
    if not path.is_file():
        raise InvalidInputError(f"--input {path}: no such file")
    return path


def _rows(feeds: dict) -> int:
    first = next(iter(feeds.values()))
    return first.shape[0] if first.ndim else 1


def feeds_from_file(sess, path_text: str, settings: Preprocessing, preprocessing_options: list[str]) -> Feeds:
    path = _existing_file(path_text)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        if preprocessing_options:
            raise UsageError(f"{', '.join(preprocessing_options)} preprocess images; --input {path} is an array "
                             f"and is fed as it is")
        names = [a.name for a in sess.get_inputs()]
        arrays = _check_against_model(path, _arrays_by_input(path, _load_arrays(path), names), sess)
        rows = _rows(arrays)
        return Feeds(arrays, [str(path)] if rows == 1 else [f"{path} row {i}" for i in range(rows)])
    if suffix in IMAGE_SUFFIXES:
        return Feeds(_image_feeds(sess, path, _read_image(path), settings), [str(path)], from_images=True)
    raise InvalidInputError(f"--input {path}: unknown file type {suffix!r}; give .npy, .npz or an image "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))})")


def default_feeds(sess, settings: Preprocessing = PRESETS["imagenet"]) -> tuple[dict, str]:
    """The bundled sample photo for image models, else seeded random data; and what was used."""
    found = image_input(sess)
    if found is not None:
        name, height, width = found
        return {name: preprocess(sample_image(), height, width, settings)}, f"{SAMPLE_SOURCE}, {height}x{width}"
    rng = np.random.default_rng(0)
    shapes = batch_one_shapes(sess)
    feeds = {a.name: rng.standard_normal(shapes[a.name]).astype(numpy_dtype(a.type)) for a in sess.get_inputs()}
    return feeds, "random normal data (seed 0)"


def run_feeds(sess, paths: list[str], settings: Preprocessing, preprocessing_options: list[str]) -> list[Feeds]:
    """The runs to make: one when the model takes the whole batch (a symbolic batch dimension), else one per
    file; each run's rows named by their source."""
    if not paths:
        arrays, source = default_feeds(sess, settings)
        return [Feeds(arrays, [source], from_images=source.startswith(SAMPLE_SOURCE))]
    per_file = [feeds_from_file(sess, path, settings, preprocessing_options) for path in paths]
    if len(per_file) == 1 or not _batch_is_symbolic(sess):
        return per_file
    names = list(per_file[0].arrays)
    try:
        stacked = {name: np.concatenate([f.arrays[name] for f in per_file], axis=0) for name in names}
    except ValueError:
        shapes = [[list(f.arrays[name].shape) for name in names] for f in per_file]
        raise InvalidInputError(f"--input: the files cannot form one batch: their arrays have shapes {shapes}") \
            from None
    return [Feeds(stacked, [source for f in per_file for source in f.sources],
                  from_images=all(f.from_images for f in per_file))]


def _batch_is_symbolic(sess) -> bool:
    return all(arg.shape is not None and len(arg.shape) > 0 and not is_static(arg.shape[0])
               for arg in sess.get_inputs())
