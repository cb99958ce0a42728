"""What `edgerun run` says about a model's outputs: top-k classes (with ImageNet's or the user's labels) for
classifier outputs, [N, C] or [N, C, 1, 1]; min/max/mean for any other numeric output; as text or as JSON
(docs/json-schemas.md)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgerun.errors import InvalidInputError
from edgerun.zoo.images import imagenet_labels

IMAGENET_CLASSES = 1000
MAX_LABELS_BYTES = 16 * 1024**2


# ================================================================ labels
def read_labels(path_text: str) -> list[str]:
    """One label per line (trailing blank lines dropped); label i names class i."""
    path = Path(path_text)
    if path.is_dir():
        raise InvalidInputError(f"--labels {path}: is a directory; give a text file with one label per line")
    if not path.is_file():
        raise InvalidInputError(f"--labels {path}: no such file")
    if path.stat().st_size > MAX_LABELS_BYTES:
        raise InvalidInputError(f"--labels {path}: {path.stat().st_size:,} bytes, more than the "
                                f"{MAX_LABELS_BYTES:,} a label file may hold")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"--labels {path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") \
            from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InvalidInputError(f"--labels {path}: the file holds no labels")
    return [line.strip() for line in lines]


def _imagenet_labels():
    try:
        return imagenet_labels()
    except (RuntimeError, OSError):
        return None


# ================================================================ classifier outputs
def class_scores(array: np.ndarray, classes: int | None) -> np.ndarray | None:
    """The output as [rows, C] scores when it is a classifier output: float, [..., C] or [N, C, 1, 1], with
    C = `classes` (the --labels count) or, without labels, ImageNet's 1000."""
    if array.size == 0 or not np.issubdtype(array.dtype, np.floating):
        return None
    wanted = classes or IMAGENET_CLASSES
    if array.ndim == 4 and array.shape[1] == wanted and array.shape[2:] == (1, 1):
        return array.reshape(array.shape[0], wanted)
    if array.ndim >= 1 and array.shape[-1] == wanted:
        return array.reshape(-1, wanted)
    return None


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, unless the scores already are probabilities (a model ending in Softmax)."""
    x = logits.astype(np.float64)
    looks_normalised = x.min() >= 0 and np.allclose(x.sum(axis=-1), 1.0, atol=1e-3)
    if looks_normalised:
        return x
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits_row: np.ndarray, k: int, labels: list[str] | None) -> list[dict]:
    probs = probabilities(logits_row)
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"class": int(i), "label": labels[i] if labels else str(i), "probability": float(probs[i])}
            for i in order]


def json_safe(value):
    """The value with every NaN or infinite float replaced by None: JSON has neither."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    return value


def summarise_output(name: str, array: np.ndarray, k: int, labels: list[str] | None) -> dict:
    """The JSON form of one output (docs/json-schemas.md, `edgerun run --json`)."""
    scores = class_scores(array, len(labels) if labels else None)
    label_names = labels if labels else (_imagenet_labels() if scores is not None else None)
    numeric = array.size > 0 and np.issubdtype(array.dtype, np.number)
    return {
        "name": name,
        "shape": [int(d) for d in array.shape],
        "dtype": array.dtype.name,
        "top_k": None if scores is None else [top_k(row, min(k, scores.shape[1]), label_names) for row in scores],
        "min": float(array.min()) if numeric else None,
        "max": float(array.max()) if numeric else None,
        "mean": float(array.astype(np.float64).mean()) if numeric else None,
    }


def output_lines(summary: dict, sources: list[str]) -> list[str]:
    """The text form of one output summary; classifier rows are named by the input they came from."""
    name, shape = summary["name"], summary["shape"]
    if summary["top_k"] is None:
        if summary["min"] is None:
            return [f"output {name!r} {shape} {summary['dtype']}"]
        return [f"output {name!r} {shape} {summary['dtype']}: min {summary['min']:.6g} max {summary['max']:.6g} "
                f"mean {summary['mean']:.6g}"]
    k = len(summary["top_k"][0])
    lines = [f"output {name!r} {shape}: top-{k} (softmax probabilities)"]
    rows = summary["top_k"]
    for item, row in enumerate(rows):
        if len(rows) > 1:
            source = f" {sources[item]}" if len(sources) == len(rows) else ""
            lines.append(f"  item {item}:{source}")
        for rank, entry in enumerate(row, 1):
            lines.append(f"  {rank}. {entry['probability']:7.4f}  {entry['label']}  (class {entry['class']})")
    return lines

