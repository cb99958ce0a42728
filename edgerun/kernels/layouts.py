"""The weight layouts the native kernels read (transposed block weights, packed GEMM panels): made once
per weight, or taken from a bundle that stores them.

Every layout a kernel derives from a constant goes through `layout(weight name, kind, shape, build)`:
- inside `stored_layouts(mapping)` (edgerun.bundle opens a session so) a layout the bundle stores
  under the same key is used in place (a read-only view of the mapped file: no second copy), after its
  dtype and shape are checked; a key the bundle lacks (another ISA variant's packing) is built.
- inside `recording()` (edgerun.compiler) every layout made or taken is collected, so that a bundle can
  store it, with the weights some kernel also reads in their own layout (`original_read`): the others
  are read through their layouts only.
Keys name the weight and everything the layout depends on: "T" (a transpose) depends on nothing else;
packed panels name the ISA variant and a fingerprint of its packing (native.packing_key), so a bundle built
on one variant, or by an edgerun whose GEMM tiles differ, is repacked rather than misread.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar

import numpy as np

from edgerun.errors import BundleError

TRANSPOSE = "T"

_stored: ContextVar = ContextVar("edgerun_stored_layouts", default=None)
_recorder: ContextVar = ContextVar("edgerun_layout_recorder", default=None)


def layout_key(kind: str, weight: str) -> str:
    return f"{kind}:{weight}"


def weight_of(key: str) -> str:
    """The constant a layout key (layout_key) derives from."""
    return key.split(":", 1)[1]


@contextlib.contextmanager
def stored_layouts(layouts: dict):
    """Kernels prepared inside take the layouts in `layouts` ({layout_key: array}) instead of building them."""
    token = _stored.set(dict(layouts))
    try:
        yield
    finally:
        _stored.reset(token)


class Recorded:
    """What the kernels prepared inside `recording()` read: `layouts` {layout_key: array}, and the weights
    also read in their own layout (`originals_read`, by name)."""

    def __init__(self):
        self.layouts: dict[str, np.ndarray] = {}
        self.originals_read: set[str] = set()

    def superseded(self) -> set[str]:
        """The weights read through a layout only."""
        return {weight_of(key) for key in self.layouts} - self.originals_read


@contextlib.contextmanager
def recording():
    """A Recorded of every layout the kernels prepared inside make or take."""
    made = Recorded()
    token = _recorder.set(made)
    try:
        yield made
    finally:
        _recorder.reset(token)


def layout(weight: str, kind: str, shape: tuple, build, original_read: bool = False) -> np.ndarray:
    """The float32 layout `kind` of the constant named `weight`: the stored one when a bundle gives it
    (BundleError when its dtype or shape is not `shape`), else build(). original_read: some kernel reads
    the weight in its own layout too (the native depthwise reads the taps the numpy block reads
    transposed)."""
    key = layout_key(kind, weight)
    stored = _stored.get()
    array = stored.get(key) if stored else None
    if array is not None:
        _check_stored(key, array, tuple(shape))
    else:
        array = build()
    made = _recorder.get()
    if made is not None:
        made.layouts[key] = array
        if original_read:
            made.originals_read.add(weight)
    return array


def _check_stored(key: str, array, shape: tuple) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != np.float32 or not array.flags.c_contiguous:
        raise BundleError(f"malformed bundle: kernel layout {key!r} is not a C-contiguous float32 array")
    if array.shape != shape:
        raise BundleError(f"malformed bundle: kernel layout {key!r} has shape {list(array.shape)}, "
                          f"the kernel reads {list(shape)}")


def transposed(weight: str, matrix: np.ndarray, original_read: bool = False) -> np.ndarray:
    """matrix.T, C-contiguous float32 (ISA-independent)."""
    rows, cols = matrix.shape
    return layout(weight, TRANSPOSE, (cols, rows),
                  lambda: np.ascontiguousarray(matrix.T, dtype=np.float32), original_read)
