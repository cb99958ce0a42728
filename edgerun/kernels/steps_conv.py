"""Arena kernels of ConvTranspose (any rank, float32) and of FusedConv of other ranks than 2-D.

Per image and group, one matrix product spreads every input pixel over the output channels and kernel taps
(the `cols` scratch, out-channels-per-group x taps x input pixels), then each tap's slab is added into the
output at its strided place (the output was set to the bias first). The geometry (pads, output_shape,
auto_pad, output_padding) is the reference op's.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from edgerun.kernels.activations import Activation, apply_inplace
from edgerun.kernels.numpy_steps import ITEMSIZE, FusedConvKernel, StepKernel, _needs_act_tmp, _tap_range
from edgerun.ir import Node


class ConvTransposeKernel(StepKernel):
    """`reference` is edgerun.ops.conv: its _transpose_params and _transpose_geometry give the geometry."""

    def __init__(self, reference):
        self.reference = reference

    def scratch_bytes(self, node, in_shapes, out_shapes):
        x_shape, w_shape = in_shapes[0], in_shapes[1]
        return {"cols": max(1, w_shape[1] * math.prod(w_shape[2:]) * math.prod(x_shape[2:])) * ITEMSIZE}

    def run(self, node, inputs, outputs, scratch):
        x, w, y = inputs[0], inputs[1], outputs[0]
        b = inputs[2] if len(inputs) > 2 else None
        kernel_shape, strides, dilations, group = self.reference._transpose_params(node, x.shape, w.shape)
        pads, _ = self.reference._transpose_geometry(node, x.shape[2:], kernel_shape, strides, dilations)
        cg, mg = w.shape[0] // group, w.shape[1]
        pixels = math.prod(x.shape[2:])
        taps = math.prod(kernel_shape)
        cols = scratch["cols"][: mg * taps * pixels].reshape(mg, taps, *x.shape[2:])
        if b is None:
            y.fill(0)
        else:
            np.copyto(y, b.reshape((1, -1) + (1,) * len(kernel_shape)))
        placements = _tap_placements(x.shape[2:], y.shape[2:], kernel_shape, strides, dilations, pads)
        for n in range(x.shape[0]):
            for g in range(group):
                weights = w[g * cg:(g + 1) * cg].reshape(cg, mg * taps).T   # a transposed view, no copy
                np.matmul(weights, x[n, g * cg:(g + 1) * cg].reshape(cg, pixels),
                          out=cols.reshape(mg * taps, pixels))
                out = y[n, g * mg:(g + 1) * mg]
                for t, source, target in placements:
                    np.add(out[target], cols[(slice(None), t) + source], out=out[target])


def _tap_placements(in_shape, out_shape, kernel_shape, strides, dilations, pads):
    """(tap index, input slices, output slices) for every tap that lands inside the output: input index i
    of a tap at offset j goes to output i * stride + j * dilation - pad_begin."""
    placements = []
    for t, offsets in enumerate(itertools.product(*(range(k) for k in kernel_shape))):
        source, target = [slice(None)], [slice(None)]
        for axis, j in enumerate(offsets):
            shift, s = j * dilations[axis] - pads[axis], strides[axis]
            first = max(0, -(shift // s)) if shift < 0 else 0
            last = out_shape[axis] - 1 - shift   # the largest i * s that still lands inside
            stop = min(in_shape[axis], last // s + 1) if last >= 0 else 0
            if first >= stop:
                break
            source.append(slice(first, stop))
            target.append(slice(first * s + shift, (stop - 1) * s + shift + 1, s))
        else:
            placements.append((t, tuple(source[1:]), tuple(target)))
    return placements




class FusedConvAnyRankKernel(FusedConvKernel):
    """FusedConv of any rank: 2-D convolutions run on FusedConvKernel; 1-D and 3-D ones (and above) gather
    their taps into the `im2col` scratch (cg x taps x output pixels, zero where a tap falls in the pads)
    and run one matrix product per group and image."""

    def scratch_bytes(self, node, in_shapes, out_shapes):
        if len(in_shapes[0]) == 4:
            return super().scratch_bytes(node, in_shapes, out_shapes)
        cin, cout = in_shapes[0][1], out_shapes[0][1]
        group = node.attrs.get("group", 1)
        need = {"im2col": max(1, cin // group * math.prod(node.attrs["kernel_shape"])
                              * math.prod(out_shapes[0][2:])) * ITEMSIZE}
        if _needs_act_tmp(node):
            need["act"] = cout * math.prod(out_shapes[0][2:]) * ITEMSIZE
        return need

    def run(self, node, inputs, outputs, scratch):
        x, w, y = inputs[0], inputs[1], outputs[0]
        if x.ndim == 4:
            return super().run(node, inputs, outputs, scratch)
        b = inputs[2] if len(inputs) > 2 else None
        group = node.attrs.get("group", 1)
        cg, og = x.shape[1] // group, y.shape[1] // group
        kernel = list(node.attrs["kernel_shape"])
        rank = len(kernel)
        strides = list(node.attrs.get("strides", [1] * rank))
        dilations = list(node.attrs.get("dilations", [1] * rank))
        pads = list(node.attrs.get("pads", [0] * (2 * rank)))
        taps, pixels = math.prod(kernel), math.prod(y.shape[2:])
        cols = scratch["im2col"][: cg * taps * pixels].reshape(cg, taps, *y.shape[2:])
        activation = Activation(node.attrs.get("activation", ""), tuple(node.attrs.get("activation_params", ())))
        for n in range(x.shape[0]):
            for g in range(group):
                _gather_taps(x[n, g * cg:(g + 1) * cg], cols, kernel, strides, dilations, pads)
                np.matmul(w[g * og:(g + 1) * og].reshape(og, cg * taps), cols.reshape(cg * taps, pixels),
                          out=y[n, g * og:(g + 1) * og].reshape(og, pixels))
            if b is not None:
                np.add(y[n], b.reshape((-1,) + (1,) * rank), out=y[n])
            if len(inputs) > 3 and inputs[3] is not None:   # a fused residual (passes/fuse_add.py)
                np.add(y[n], inputs[3][n], out=y[n])
            apply_inplace(y[n].reshape(-1), activation, scratch.get("act"))


def _gather_taps(x, cols, kernel, strides, dilations, pads):
    """cols[c, tap, *out] = x[c, *(out * stride + offset * dilation - pad_begin)], 0 outside x."""
    out_shape = cols.shape[2:]
    for t, offsets in enumerate(itertools.product(*(range(k) for k in kernel))):
        source, target = [slice(None)], [slice(None), t]
        for axis, j in enumerate(offsets):
            shift, s = j * dilations[axis] - pads[axis], strides[axis]
            first, stop = _tap_range(out_shape[axis], x.shape[1 + axis], shift, s)
            source.append(slice(first * s + shift, (stop - 1) * s + shift + 1, s) if first < stop else slice(0, 0))
            target.append(slice(first, stop))
        cols[:, t].fill(0)
        if all(sl.start < sl.stop for sl in target[2:]):
            np.copyto(cols[tuple(target)], x[tuple(source)])


class ConvKernel(StepKernel):
    """An unfused Conv (the optimisation passes off): run as the FusedConv it stands for, without activation,
    with kernel_shape from W and auto_pad resolved for the input's shape by edgerun.ops.conv (`reference`)."""

    def __init__(self, reference):
        self.fused = FusedConvAnyRankKernel()
        self.reference = reference

    def scratch_bytes(self, node, in_shapes, out_shapes):
        fused = self._as_fused(node, in_shapes[0], in_shapes[1])
        return self.fused.scratch_bytes(fused, in_shapes, out_shapes)

    def run(self, node, inputs, outputs, scratch):
        self.fused.run(self._as_fused(node, inputs[0].shape, inputs[1].shape), inputs, outputs, scratch)

    def _as_fused(self, node, x_shape, w_shape) -> Node:
        kernel_shape, strides, dilations, group = self.reference._conv_params(node, x_shape, w_shape)
        pads = self.reference._conv_pads(node, x_shape[2:], kernel_shape, strides, dilations)
        return _fused_node(node, kernel_shape, strides, dilations, pads, group)


def _fused_node(node, kernel_shape, strides, dilations, pads, group) -> Node:
    attrs = {"kernel_shape": kernel_shape, "strides": strides, "dilations": dilations, "pads": pads,
             "group": group, "activation": "", "activation_params": []}
    return Node("FusedConv", node.inputs, node.outputs, attrs, node.name, "edgerun")

