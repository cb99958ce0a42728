"""Python face of the fused non-conv kernels of the C extension (native/fused_steps.c): squeeze-excitation
and channel shuffle of one image. Arguments are checked in C (float32, C-contiguous, sizes, no overlap
between what is written and anything else); errors come back as EdgerunError."""
from __future__ import annotations

import numpy as np

from edgerun.kernels.activations import Activation
from edgerun.kernels.native import _act, _call, _module, _threads


def squeeze_excite(x: np.ndarray, y: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray,
                   b2: np.ndarray, act1: Activation, act2: Activation, scratch: np.ndarray,
                   threads: int = 1) -> None:
    """y (C, ...) = x * act2(w2 @ act1(w1 @ mean(x) + b1) + b2), the gate broadcast over each channel's
    pixels; w1 (S, C), w2 (C, S); scratch: at least C + S floats."""
    channels = x.shape[0]
    squeeze = w1.shape[0]
    pixels = x.size // channels
    _call(_module().squeeze_excite, x, y, w1, b1, w2, b2, scratch, channels, pixels, squeeze, _act(act1),
          _act(act2), _threads(threads))


def channel_shuffle(x: np.ndarray, y: np.ndarray, groups: int, threads: int = 1) -> None:
    """y channel j * groups + i = x channel i * (C / groups) + j, whole planes; x, y (C, ...)."""
    channels = x.shape[0]
    _call(_module().channel_shuffle, x, y, channels, x.size // channels, int(groups), _threads(threads))


def binary(kind: int, a: np.ndarray, b: np.ndarray, y: np.ndarray, threads: int = 1) -> None:
    """y = a (add 0, sub 1, mul 2, div 3) b, all float32 of y's size; threads take ranges of elements."""
    _call(_module().binary, int(kind), a, b, y, y.size, _threads(threads))


def activation(x: np.ndarray, y: np.ndarray, act: Activation, threads: int = 1) -> None:
    """y = act(x), float32 of one size; threads take ranges of elements."""
    _call(_module().activation, x, y, y.size, _act(act), _threads(threads))
