"""ChannelShuffle (domain "edgerun"): ShuffleNet's Reshape (N, g, C/g, ...) -> Transpose (0, 2, 1, ...) ->
Reshape (N, C, ...) as one step; passes/fuse_shuffle.py makes it. Input X `(N, C, ...)`, attribute `groups`
(dividing C). Output channel `j * groups + i` is input channel `i * (C / groups) + j`."""
from __future__ import annotations

import numpy as np

from edgerun.errors import InvalidModelError
from edgerun.ir import Node, TensorInfo
from edgerun.kernels.steps_shuffle import ChannelShuffleKernel, NativeChannelShuffleKernel
from edgerun.ops import register

DOMAIN = "edgerun"


def _groups(node: Node, shape) -> int:
    groups = node.attrs.get("groups")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise InvalidModelError(f"{node.describe()}: attribute 'groups' must be a positive int, got {groups!r}")
    if len(shape) < 2 or not isinstance(shape[1], int) or shape[1] % groups:
        raise InvalidModelError(f"{node.describe()}: groups {groups} must divide the channels of X {tuple(shape)}")
    return groups


def _infer(node, inputs, opset):
    if len(inputs) != 1 or inputs[0] is None or inputs[0].shape is None:
        raise InvalidModelError(f"{node.describe()}: needs one input X of known shape")
    _groups(node, tuple(inputs[0].shape))
    return [TensorInfo(tuple(inputs[0].shape), np.dtype(inputs[0].dtype))]


def _compute(node, inputs, opset):
    if len(inputs) != 1 or inputs[0] is None:
        raise InvalidModelError(f"{node.describe()}: needs one input X")
    x = np.asarray(inputs[0])
    groups = _groups(node, x.shape)
    n, channels = x.shape[:2]
    rest = x.shape[2:]
    return [x.reshape((n, groups, channels // groups) + rest).swapaxes(1, 2).reshape(x.shape).copy()]


register("ChannelShuffle", _infer, _compute, domain=DOMAIN, step=ChannelShuffleKernel(),
         native=NativeChannelShuffleKernel, any_dtype=True)
