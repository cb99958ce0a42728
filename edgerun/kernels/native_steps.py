"""Non-block steps on the C kernels: convolutions (1x1, depthwise, and every other 2-D one banded), pooling,
Gemm.

Every class here is an op's native variant, named by the op's definition (`edgerun.ops.register(...,
native=Class)`) and built per node as `Class(numpy_kernel, threads)`; anything the C kernels do not cover
runs on that numpy kernel (`self.fallback`). This module imports nothing of edgerun.ops.
"""
from __future__ import annotations

import numpy as np

from edgerun.ir import Node
from edgerun.kernels import Activation, layouts, native, native_fused
from edgerun.kernels.numpy_steps import (ITEMSIZE, ActivationKernel, FusedConvKernel, GemmKernel,
                                         GlobalAveragePoolKernel, StepKernel, _is_depthwise, _is_pointwise,
                                         conv_band_rows)


def _activation(node: Node) -> Activation:
    return Activation(node.attrs.get("activation", ""), tuple(node.attrs.get("activation_params", ())))


def _native_depthwise(node: Node, cin: int, cout: int) -> bool:
    a = node.attrs
    kh, kw = a["kernel_shape"]
    sh, sw = a.get("strides", [1, 1])
    return (_is_depthwise(node, cin, cout) and kh == kw and sh == sw
            and list(a.get("dilations", [1, 1])) == [1, 1])


def _has_sum(node: Node) -> bool:
    """A FusedConv carrying a residual input (passes/fuse_add.py): inputs [X, W, B or "", S]."""
    return len(node.inputs) > 3 and bool(node.inputs[3])


class NativeFusedConvKernel(StepKernel):
    """2-D FusedConv in C: 1x1, depthwise, and every other convolution (dense, grouped, strided, dilated,
    any pads, with a fused residual input) banded by conv.c; other ranks on the numpy kernel.

    1x1 weights are packed at plan time into the panels of native.pointwise_conv_packed (the pixels that
    do not fill a whole GEMM tile go through an `edge` scratch of at most 256 x 32 floats). The banded
    kernel ("conv") packs its weights per group once; each band of output rows gathers its taps one slab
    at a time (native.conv_slab_groups groups, at most CONV_BLOCK_TAPS taps of each) into the `cols`
    scratch, in the GEMM's tile layout, and runs one GEMM over the slab's groups: one kernel call for all
    groups, and the scratch is bounded by the band (its rows: conv_band_rows of the slab's gathered values
    per pixel), not by the output. Within that same scratch conv.c runs every conv but 1x1 on shifted rows
    (the band's input copied once, each tap a shifted view of the copy; conv.c's header)."""

    def __init__(self, fallback: StepKernel | None = None, threads: int = 1):
        self.fallback = fallback or FusedConvKernel()
        self.threads = threads
        # (weight, its C layout, a zero bias): one node per instance
        self._prepared: tuple | None = None

    def _native_kind(self, node: Node, cin: int, cout: int) -> str | None:
        if len(node.attrs["kernel_shape"]) != 2:
            return None
        if _has_sum(node):
            return "conv"
        if _is_pointwise(node):
            return "pointwise"
        if _native_depthwise(node, cin, cout):
            return "depthwise"
        return "conv"

    def _geometry(self, node, x_shape, out_shape, w_shape) -> tuple:
        a = node.attrs
        kh, kw = a["kernel_shape"]
        cin, (_, ho, wo) = x_shape[0], out_shape
        group = a.get("group", 1)
        taps = cin // group * kh * kw
        slab = native.conv_slab_groups(group, taps)
        return native.conv_geometry(x_shape, out_shape, w_shape, group, a.get("strides", [1, 1]),
                                    a.get("dilations", [1, 1]), a.get("pads", [0, 0, 0, 0]),
                                    conv_band_rows(slab * min(native.CONV_BLOCK_TAPS, taps), ho, wo), slab)

    def scratch_bytes(self, node, in_shapes, out_shapes):
        _, cin, *spatial = in_shapes[0]
        cout = out_shapes[0][1]
        kind = self._native_kind(node, cin, cout)
        if kind is None or self._prepared is None:
            return self.fallback.scratch_bytes(node, in_shapes, out_shapes)
        if kind == "depthwise":
            return {}
        if kind == "conv":
            geometry = self._geometry(node, in_shapes[0][1:], out_shapes[0][1:], in_shapes[1])
            return {"cols": native.conv_sizes(geometry)[1] * ITEMSIZE}
        pixels = int(np.prod(out_shapes[0][2:]))
        edge = native.packed_pointwise_sizes(cout, pixels, cin)[1]
        return {"edge": edge * ITEMSIZE} if edge else {}

    def prepare(self, node, constants):
        # weights are read-only model data, not activations: their C layouts are made once, here
        w = constants.get(node.inputs[1])
        if w is None or w.ndim != 4:
            return
        cout, cin_per_group = w.shape[0], w.shape[1]
        group = node.attrs.get("group", 1)
        self._act = _activation(node)
        kind = self._native_kind(node, cin_per_group * group, cout)
        name = node.inputs[1]
        if kind == "pointwise":
            layout = layouts.layout(name, f"pointwise@{native.packing_key()}",
                                    (native.packed_pointwise_floats(cout, cin_per_group),),
                                    lambda: native.pack_pointwise_weights(w.reshape(cout, -1)))
        elif kind == "conv":
            dilations = [int(d) for d in node.attrs.get("dilations", [1, 1])]
            layout = layouts.layout(name, f"conv@{native.packing_key()}/g{group}/d{dilations[0]}x{dilations[1]}",
                                    (native.packed_conv_floats(w.shape, group, dilations),),
                                    lambda: native.pack_conv_weights(w, group, dilations))
        elif kind == "depthwise":
            layout = np.ascontiguousarray(w.reshape(cout, *w.shape[2:]), dtype=np.float32)
        else:
            return
        self._prepared = (w, layout, np.zeros(cout, np.float32))

    def c_arguments(self, node, constants, in_shapes, out_shapes):
        """{"kind": "pointwise" | "depthwise" | "conv", "weights": the layout prepare() made (packed 1x1 panels,
        (Cout, kh, kw) depthwise taps, conv.c's packed groups), "zero_bias": the bias used when the node has
        none, "act": the fused activation, "geometry": conv.c's tuple for one image ("conv" only)}."""
        x_shape, y_shape = in_shapes[0], out_shapes[0]
        kind = self._native_kind(node, x_shape[1], y_shape[1])
        w = constants.get(node.inputs[1])
        if kind is None or self._prepared is None or self._prepared[0] is not w or len(x_shape) != 4:
            return None
        arguments = {"kind": kind, "weights": self._prepared[1], "zero_bias": self._prepared[2], "act": self._act}
        if kind == "conv":
            arguments["geometry"] = self._geometry(node, x_shape[1:], y_shape[1:], w.shape)
        return arguments

    def run(self, node, inputs, outputs, scratch):
        x, w = inputs[0], inputs[1]
        b = inputs[2] if len(inputs) > 2 else None
        y = outputs[0]
        kind = self._native_kind(node, x.shape[1], y.shape[1])
        if kind is None or self._prepared is None or self._prepared[0] is not w:
            return self.fallback.run(node, inputs, outputs, scratch)
        layout, zero_bias, act = self._prepared[1], self._prepared[2], self._act
        bias = b if b is not None else zero_bias
        if kind == "depthwise":
            for n in range(x.shape[0]):
                native.depthwise_conv(x[n], layout, bias, y[n], node.attrs.get("strides", [1, 1])[0],
                                      tuple(node.attrs.get("pads", [0, 0, 0, 0])), act, self.threads)
        elif kind == "conv":
            s = inputs[3] if len(inputs) > 3 else None
            geometry = self._geometry(node, x.shape[1:], y.shape[1:], w.shape)
            for n in range(x.shape[0]):
                native.conv(x[n], layout, bias, None if s is None else s[n], y[n], scratch["cols"], geometry, act,
                            self.threads)
        else:
            for n in range(x.shape[0]):
                native.pointwise_conv_packed(x[n], layout, bias, y[n], scratch.get("edge"), act, self.threads)


class NativeGlobalAveragePoolKernel(StepKernel):
    def __init__(self, fallback: StepKernel | None = None, threads: int = 1):
        self.fallback = fallback or GlobalAveragePoolKernel()
        self.threads = threads

    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        if x.ndim != 4:
            return self.fallback.run(node, inputs, outputs, scratch)
        for n in range(x.shape[0]):
            native.global_average_pool(x[n], y[n], self.threads)


class NativePoolKernel(StepKernel):
    """2-D MaxPool / AveragePool in C (dilation 1, pads smaller than the kernel); others on numpy."""

    def __init__(self, fallback: StepKernel, threads: int = 1):
        self.fallback = fallback   # MaxPoolKernel / AveragePoolKernel: also the op's pad rule
        self.threads = threads

    def supports(self, node):
        return self.fallback.supports(node)

    def scratch_bytes(self, node, in_shapes, out_shapes):
        return self.fallback.scratch_bytes(node, in_shapes, out_shapes)

    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        if x.ndim != 4:
            return self.fallback.run(node, inputs, outputs, scratch)
        kernel, strides, dilations, pads = self.fallback.geometry(node, x.shape, y.shape)
        top, left, bottom, right = pads
        if (dilations != [1, 1] or max(top, bottom) >= kernel[0] or max(left, right) >= kernel[1]
                or (y.shape[2] - 1) * strides[0] >= x.shape[2] + top
                or (y.shape[3] - 1) * strides[1] >= x.shape[3] + left):
            return self.fallback.run(node, inputs, outputs, scratch)
        if node.op_type == "MaxPool":
            kind = "max"
        else:
            kind = "average_with_pads" if node.attrs.get("count_include_pad", 0) else "average"
        for n in range(x.shape[0]):
            native.pool2d(kind, x[n], y[n], kernel, strides, (top, left, bottom, right), self.threads)


class NativeGemmKernel(StepKernel):
    """Gemm of a few rows by a constant weight (a classifier: one row per image) as one threaded
    matrix-vector product per row; other Gemms (alpha != 1, a C that is not a vector of N, a weight
    that is an activation) on the numpy kernel."""

    def __init__(self, fallback: StepKernel | None = None, threads: int = 1):
        self.fallback = fallback or GemmKernel()
        self.threads = threads
        self._prepared: tuple | None = None   # (b as given, its (N, K) C-contiguous layout)

    def prepare(self, node, constants):
        b = constants.get(node.inputs[1])
        if b is None or b.ndim != 2 or b.dtype != np.float32 or node.attrs.get("transA", 0):
            return
        layout = np.ascontiguousarray(b) if node.attrs.get("transB", 0) else layouts.transposed(node.inputs[1], b)
        self._prepared = (b, layout)

    def c_arguments(self, node, constants, in_shapes, out_shapes):
        """{"weight": the (N, K) layout gemv reads}, for a row-major 2-D A and alpha 1 (the bias is checked
        by the caller, as run() does with _bias)."""
        prepared = self._prepared
        if (prepared is None or prepared[0] is not constants.get(node.inputs[1])
                or node.attrs.get("alpha", 1.0) != 1.0 or len(in_shapes[0]) != 2):
            return None
        return {"weight": prepared[1]}

    def _bias(self, node, inputs, rows: int):
        """The vector C adds to every row (None: no C or beta == 0), or False when it is not one."""
        c = inputs[2] if len(inputs) > 2 else None
        if c is None or node.attrs.get("beta", 1.0) == 0.0:
            return None
        if node.attrs.get("beta", 1.0) != 1.0 or c.dtype != np.float32 or c.shape not in ((rows,), (1, rows)):
            return False
        return np.ascontiguousarray(c.reshape(rows))

    def run(self, node, inputs, outputs, scratch):
        a, b, y = inputs[0], inputs[1], outputs[0]
        prepared = self._prepared
        if (prepared is None or prepared[0] is not b or node.attrs.get("alpha", 1.0) != 1.0 or a.ndim != 2
                or a.dtype != np.float32 or not a.flags.c_contiguous or not y.flags.c_contiguous):
            return self.fallback.run(node, inputs, outputs, scratch)
        weight = prepared[1]
        bias = self._bias(node, inputs, weight.shape[0])
        if bias is False:
            return self.fallback.run(node, inputs, outputs, scratch)
        for row in range(a.shape[0]):
            native.gemv(weight, a[row], bias, y[row], self.threads)


# ---------------------------------------------------------------- plain elementwise steps on threads
def _float32_contiguous(*arrays) -> bool:
    return all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays)


class NativeBinaryKernel(StepKernel):
    """Add / Sub / Mul / Div of two float32 operands of the output's shape (a residual Add) in C, threads
    taking ranges of elements; broadcasts and other dtypes on the numpy kernel."""

    KINDS = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3}

    def __init__(self, fallback: StepKernel, threads: int = 1):
        self.fallback = fallback
        self.threads = threads

    def supports(self, node):
        return self.fallback.supports(node)

    def scratch_bytes(self, node, in_shapes, out_shapes):
        return self.fallback.scratch_bytes(node, in_shapes, out_shapes)

    def run(self, node, inputs, outputs, scratch):
        a, b, y = inputs[0], inputs[1], outputs[0]
        kind = self.KINDS.get(node.op_type)
        if (kind is None or a.shape != y.shape or b.shape != y.shape or y.size == 0
                or not _float32_contiguous(a, b, y)):
            return self.fallback.run(node, inputs, outputs, scratch)
        native_fused.binary(kind, a, b, y, self.threads)

    def c_arguments(self, node, constants, in_shapes, out_shapes):
        """{"kind": add 0, sub 1, mul 2, div 3} for two operands of the output's shape."""
        kind = self.KINDS.get(node.op_type)
        shapes = {tuple(s) for s in (*in_shapes[:2], out_shapes[0])}
        if kind is None or len(in_shapes) != 2 or len(shapes) != 1 or 0 in out_shapes[0]:
            return None
        return {"kind": kind}


class NativeActivationKernel(StepKernel):
    """A standalone activation of the table in C (activation.c's loops), threads taking ranges of elements."""

    def __init__(self, fallback: ActivationKernel, threads: int = 1):
        self.fallback = fallback
        self.threads = threads

    def supports(self, node):
        return self.fallback.supports(node)

    def scratch_bytes(self, node, in_shapes, out_shapes):
        return self.fallback.scratch_bytes(node, in_shapes, out_shapes)

    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        params = self.fallback.params(node, inputs)
        if y.size == 0 or not _float32_contiguous(x, y) or any(p is None for p in params):
            return self.fallback.run(node, inputs, outputs, scratch)
        native_fused.activation(x, y, Activation(self.fallback.kind.name, tuple(float(p) for p in params)),
                                self.threads)

    def c_arguments(self, node, constants, in_shapes, out_shapes):
        """{"act": the activation}, when its parameters are constants (Clip's bounds may be inputs)."""
        inputs = [constants.get(name) if name else None for name in node.inputs]
        params = self.fallback.params(node, inputs)
        if 0 in out_shapes[0] or any(p is None for p in params):
            return None
        return {"act": Activation(self.fallback.kind.name, tuple(float(p) for p in params))}


class NativeSumKernel(NativeBinaryKernel):
    """Sum of two float32 operands of the output's shape (ResNet's residual Sum) as the C Add; others on numpy."""

    def run(self, node, inputs, outputs, scratch):
        if len(inputs) != 2:
            return self.fallback.run(node, inputs, outputs, scratch)
        a, b, y = inputs[0], inputs[1], outputs[0]
        if a.shape != y.shape or b.shape != y.shape or y.size == 0 or not _float32_contiguous(a, b, y):
            return self.fallback.run(node, inputs, outputs, scratch)
        native_fused.binary(self.KINDS["Add"], a, b, y, self.threads)

    def c_arguments(self, node, constants, in_shapes, out_shapes):
        shapes = {tuple(s) for s in (*in_shapes, out_shapes[0])}
        if len(in_shapes) != 2 or len(shapes) != 1 or 0 in out_shapes[0]:
            return None
        return {"kind": self.KINDS["Add"]}
