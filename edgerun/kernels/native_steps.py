"""Non-block steps on the C kernels: 1x1 (also grouped) and depthwise convolutions, global average pooling.

Anything the C kernels do not cover runs on the arena-aware numpy kernel of the same op.
"""
from __future__ import annotations

import numpy as np

from edgerun.ir import Node
from edgerun.kernels import Activation, native
from edgerun.kernels.numpy_steps import (FusedConvKernel, GlobalAveragePoolKernel, StepKernel, _is_depthwise,
                                         _is_grouped_pointwise, _is_pointwise)


def _activation(node: Node) -> Activation:
    return Activation(node.attrs.get("activation", ""), tuple(node.attrs.get("activation_params", ())))


def _native_depthwise(node: Node, cin: int, cout: int) -> bool:
    a = node.attrs
    kh, kw = a["kernel_shape"]
    sh, sw = a.get("strides", [1, 1])
    return (_is_depthwise(node, cin, cout) and kh == kw and sh == sw
            and list(a.get("dilations", [1, 1])) == [1, 1])


class NativeFusedConvKernel(StepKernel):
    """1x1 (grouped too: one C call per group on its contiguous channel slices) and depthwise FusedConv
    in C; other convolutions on the numpy kernel."""

    def __init__(self):
        self.fallback = FusedConvKernel()
        # (weight, its C layout (a list of per-group layouts when grouped), a zero bias): one node per instance
        self._prepared: tuple | None = None

    def _native_kind(self, node: Node, cin: int, cout: int) -> str | None:
        if _is_pointwise(node):
            return "pointwise"
        if _native_depthwise(node, cin, cout):
            return "depthwise"
        if _is_grouped_pointwise(node, cin, cout):
            return "grouped"
        return None

    def scratch_bytes(self, node, in_shapes, out_shapes):
        if self._native_kind(node, in_shapes[0][1], out_shapes[0][1]):
            return {}
        return self.fallback.scratch_bytes(node, in_shapes, out_shapes)

    def prepare(self, node, constants):
        # weights are read-only model data, not activations: their C layouts are made once, here
        w = constants.get(node.inputs[1])
        if w is None or w.ndim != 4:
            return
        cout, cin_per_group = w.shape[0], w.shape[1]
        kind = self._native_kind(node, cin_per_group * node.attrs.get("group", 1), cout)
        if kind == "grouped":
            group = node.attrs["group"]
            og = cout // group
            layout = [np.ascontiguousarray(w[g * og:(g + 1) * og].reshape(og, cin_per_group).T, dtype=np.float32)
                      for g in range(group)]
            self._prepared = (w, layout, np.zeros(cout, np.float32))
        elif kind is not None:
            layout = w.reshape(cout, -1).T if kind == "pointwise" else w.reshape(cout, *w.shape[2:])
            self._prepared = (w, np.ascontiguousarray(layout, dtype=np.float32), np.zeros(cout, np.float32))

    def run(self, node, inputs, outputs, scratch):
        x, w = inputs[0], inputs[1]
        b = inputs[2] if len(inputs) > 2 else None
        y = outputs[0]
        kind = self._native_kind(node, x.shape[1], y.shape[1])
        if kind is None or self._prepared is None or self._prepared[0] is not w:
            return self.fallback.run(node, inputs, outputs, scratch)
        layout, zero_bias = self._prepared[1], self._prepared[2]
        bias = b if b is not None else zero_bias
        act = _activation(node)
        for n in range(x.shape[0]):
            if kind == "grouped":
                cg, og = layout[0].shape
                for g, w_t in enumerate(layout):
                    native.pointwise_conv(x[n, g * cg:(g + 1) * cg], w_t, bias[g * og:(g + 1) * og],
                                          y[n, g * og:(g + 1) * og], act)
            elif kind == "pointwise":
                native.pointwise_conv(x[n], layout, bias, y[n], act)
            else:
                native.depthwise_conv(x[n], layout, bias, y[n], node.attrs.get("strides", [1, 1])[0],
                                      tuple(node.attrs.get("pads", [0, 0, 0, 0])), act)


class NativeGlobalAveragePoolKernel(StepKernel):
    def __init__(self):
        self.fallback = GlobalAveragePoolKernel()

    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        if x.ndim != 4:
            return self.fallback.run(node, inputs, outputs, scratch)
        for n in range(x.shape[0]):
            native.global_average_pool(x[n], y[n])


_NATIVE_VARIANTS = {"FusedConv": NativeFusedConvKernel, "GlobalAveragePool": NativeGlobalAveragePoolKernel}


def native_variant(op_type: str, numpy_kernel: StepKernel) -> StepKernel:
    """A C kernel for the op when there is one (a new instance: it keeps per-node weight layouts)."""
    factory = _NATIVE_VARIANTS.get(op_type)
    return factory() if factory is not None else numpy_kernel
