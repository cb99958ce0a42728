"""`edgerun quantize MODEL -o model.int8.onnx --calibrate DIR_OR_ZOO_SAMPLES`: a standard QDQ int8 model written
by onnxruntime's quantizer (so the same file runs on edgerun and on onnxruntime), calibrated on photos read
and preprocessed as `edgerun run` reads them (the same --preprocess options).

--calibrate takes a directory of images (.jpg, .png, ...; .npy/.npz tensors are fed as they are) or `zoo`:
the bundled calibration photos (edgerun.zoo.quantized.CALIBRATION_NAMES)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgerun.cli.inputs import IMAGE_SUFFIXES, feeds_from_file, image_input, preprocessing_from_args
from edgerun.cli.main import _add_preprocessing, _model_help
from edgerun.errors import EdgerunError
from edgerun.models import UsageError, resolve_model
from edgerun.session import InferenceSession
from edgerun.zoo import quantized

ZOO_SAMPLES = "zoo"
MAX_CALIBRATION_FILES = 1000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgerun quantize",
                                     description="Write an int8 QDQ model with onnxruntime's quantizer.")
    parser.add_argument("model", metavar="MODEL", help=_model_help())
    parser.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="where to write the int8 model")
    parser.add_argument("--calibrate", required=True, metavar="DIR_OR_ZOO_SAMPLES",
                        help=f"a directory of images or .npy/.npz inputs, or {ZOO_SAMPLES!r}: the bundled photos "
                             f"({', '.join(quantized.CALIBRATION_NAMES)})")
    parser.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor (default: per channel)")
    _add_preprocessing(parser)
    return parser


def _calibration_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | {".npy", ".npz"})
    if not files:
        raise UsageError(f"--calibrate {directory}: no images (.jpg, .png, ...) or .npy/.npz files in it")
    return files[:MAX_CALIBRATION_FILES]


def calibration_feeds(sess, source: str, settings, options: list[str]) -> list[dict]:
    if source == ZOO_SAMPLES:
        found = image_input(sess)
        if found is None:
            raise UsageError("--calibrate zoo: the bundled photos only feed a model with one (N, 3, H, W) float input")
        name, height, width = found
        return quantized.photo_feeds([p for _, p in quantized.calibration_photos()], name, height, width, settings)
    directory = Path(source)
    if not directory.is_dir():
        raise UsageError(f"--calibrate {source!r}: not a directory, and not {ZOO_SAMPLES!r}")
    feeds = []
    for path in _calibration_files(directory):
        options_for_file = options if path.suffix.lower() in IMAGE_SUFFIXES else []
        feeds.append(feeds_from_file(sess, str(path), settings, options_for_file).arrays)
    return feeds


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.preprocess_given = args.preprocess is not None
    args.preprocess = args.preprocess or "imagenet"
    try:
        model, name = resolve_model(args.model)
        sess = InferenceSession(model)
        settings = preprocessing_from_args(args)
        feeds = calibration_feeds(sess, args.calibrate, settings, [])
        path = quantized.quantize_qdq(model, feeds, args.output, per_channel=not args.per_tensor)
    except (EdgerunError, UsageError) as exc:
        print(f"edgerun quantize: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"wrote {path} (int8 QDQ, {len(feeds)} calibration input(s) from {args.calibrate}, "
          f"{'per-tensor' if args.per_tensor else 'per-channel'} weights)")
    return 0
