"""Arena-aware numpy kernels for the non-block steps of a plan.

Each kernel writes into the output views it is given and keeps any temporary of activation size in
the scratch views the plan placed in the arena. `scratch_bytes` tells the scheduler how much each
one needs, per image for convolutions (the executor loops over the batch).
"""
from __future__ import annotations

import numpy as np

from edgerun.ir import Node

ITEMSIZE = 4


class StepKernel:
    """One op's arena kernel: the scratch it needs and how to run it."""

    def scratch_bytes(self, node: Node, in_shapes: list, out_shapes: list) -> dict[str, int]:
        return {}

    def prepare(self, node: Node, constants: dict) -> None:
        """Called once when the plan is bound: derive weight layouts here, not during a run."""

    def run(self, node: Node, inputs: list, outputs: list, scratch: dict) -> None:
        raise NotImplementedError


def activation_in_place(y: np.ndarray, kind: str, params, tmp: np.ndarray | None) -> None:
    """Apply an activation to y in place; `tmp` (same size) is needed by hardswish and leakyrelu."""
    if kind == "":
        return
    if kind == "relu":
        np.maximum(y, 0, out=y)
    elif kind == "clip":
        lo, hi = params
        np.clip(y, lo, hi, out=y)
    elif kind == "hardsigmoid":
        alpha, beta = params
        np.multiply(y, alpha, out=y)
        np.add(y, beta, out=y)
        np.clip(y, 0, 1, out=y)
    elif kind == "hardswish":
        np.add(y, 3.0, out=tmp)
        np.clip(tmp, 0.0, 6.0, out=tmp)
        np.multiply(tmp, 1.0 / 6.0, out=tmp)
        np.multiply(y, tmp, out=y)
    elif kind == "leakyrelu":
        (alpha,) = params
        np.multiply(y, alpha, out=tmp)
        (np.maximum if alpha <= 1 else np.minimum)(y, tmp, out=y)
    elif kind == "sigmoid":
        np.negative(y, out=y)
        np.exp(y, out=y)
        np.add(y, 1.0, out=y)
        np.reciprocal(y, out=y)
    else:
        raise ValueError(f"unknown activation {kind!r}")


def _needs_act_tmp(node: Node) -> bool:
    return node.attrs.get("activation", "") in ("hardswish", "leakyrelu")


def _flat(view: np.ndarray, count: int) -> np.ndarray:
    return view[:count]


class FusedConvKernel(StepKernel):
    """Conv + activation. 1x1 convs are one matmul, depthwise runs tap by tap, the rest via im2col."""

    def scratch_bytes(self, node, in_shapes, out_shapes):
        _, cin, _, _ = in_shapes[0]
        _, cout, ho, wo = out_shapes[0]
        kh, kw = node.attrs["kernel_shape"]
        group = node.attrs.get("group", 1)
        need = {}
        if _is_depthwise(node, cin, cout):
            need["tap"] = ho * wo * cout * ITEMSIZE
        elif not _is_pointwise(node):
            need["im2col"] = (cin // group) * kh * kw * ho * wo * ITEMSIZE
        if _needs_act_tmp(node):
            need["act"] = cout * ho * wo * ITEMSIZE
        return need

    def run(self, node, inputs, outputs, scratch):
        x, w, b = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None
        y = outputs[0]
        for n in range(x.shape[0]):
            self._run_image(node, x[n], w, b, y[n], scratch)

    def _run_image(self, node, x, w, b, y, scratch):
        cin, cout = x.shape[0], y.shape[0]
        if _is_depthwise(node, cin, cout):
            _depthwise(x, w, y, node.attrs, scratch["tap"])
        elif _is_pointwise(node):
            np.matmul(w.reshape(cout, cin), x.reshape(cin, -1), out=y.reshape(cout, -1))
        else:
            _im2col_conv(x, w, y, node.attrs, scratch["im2col"])
        if b is not None:
            np.add(y, b.reshape(-1, 1, 1), out=y)
        tmp = scratch["act"][: y.size].reshape(y.shape) if "act" in scratch else None
        activation_in_place(y, node.attrs.get("activation", ""), node.attrs.get("activation_params", []), tmp)


def _is_pointwise(node: Node) -> bool:
    a = node.attrs
    return (list(a["kernel_shape"]) == [1, 1] and list(a.get("strides", [1, 1])) == [1, 1]
            and not any(a.get("pads", [0, 0, 0, 0])) and a.get("group", 1) == 1)


def _is_depthwise(node: Node, cin: int, cout: int) -> bool:
    return node.attrs.get("group", 1) == cin == cout and cin > 1


def _tap_range(out_len, in_len, tap_offset, stride):
    """Output indices o with 0 <= o*stride + tap_offset < in_len, as (first, stop)."""
    first = max(0, -(-(-tap_offset) // stride)) if tap_offset < 0 else 0
    stop = min(out_len, (in_len - 1 - tap_offset) // stride + 1) if in_len - 1 - tap_offset >= 0 else 0
    return first, max(first, stop)


def _depthwise(x, w, y, attrs, tap):
    c, h, wd = x.shape
    _, ho, wo = y.shape
    kh, kw = attrs["kernel_shape"]
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    pt, pl = attrs.get("pads", [0, 0, 0, 0])[:2]
    y.fill(0)
    for i in range(kh):
        r0, r1 = _tap_range(ho, h, i * dh - pt, sh)
        for j in range(kw):
            c0, c1 = _tap_range(wo, wd, j * dw - pl, sw)
            if r0 >= r1 or c0 >= c1:
                continue
            src = x[:, r0 * sh + i * dh - pt: (r1 - 1) * sh + i * dh - pt + 1: sh,
                    c0 * sw + j * dw - pl: (c1 - 1) * sw + j * dw - pl + 1: sw]
            t = tap[: src.size].reshape(src.shape)
            np.multiply(src, w[:, 0, i, j].reshape(c, 1, 1), out=t)
            np.add(y[:, r0:r1, c0:c1], t, out=y[:, r0:r1, c0:c1])


def _im2col_conv(x, w, y, attrs, col_scratch):
    cin, h, wd = x.shape
    cout, ho, wo = y.shape
    kh, kw = attrs["kernel_shape"]
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    pt, pl = attrs.get("pads", [0, 0, 0, 0])[:2]
    group = attrs.get("group", 1)
    cg, og = cin // group, cout // group
    cols = col_scratch[: cg * kh * kw * ho * wo].reshape(cg, kh, kw, ho, wo)
    for g in range(group):
        xg = x[g * cg:(g + 1) * cg]
        cols.fill(0)
        for i in range(kh):
            r0, r1 = _tap_range(ho, h, i * dh - pt, sh)
            for j in range(kw):
                c0, c1 = _tap_range(wo, wd, j * dw - pl, sw)
                if r0 >= r1 or c0 >= c1:
                    continue
                cols[:, i, j, r0:r1, c0:c1] = xg[:, r0 * sh + i * dh - pt: (r1 - 1) * sh + i * dh - pt + 1: sh,
                                                  c0 * sw + j * dw - pl: (c1 - 1) * sw + j * dw - pl + 1: sw]
        np.matmul(w[g * og:(g + 1) * og].reshape(og, -1), cols.reshape(cg * kh * kw, ho * wo),
                  out=y[g * og:(g + 1) * og].reshape(og, ho * wo))


class BinaryKernel(StepKernel):
    def __init__(self, ufunc):
        self.ufunc = ufunc

    def run(self, node, inputs, outputs, scratch):
        self.ufunc(inputs[0], inputs[1], out=outputs[0])


class GlobalAveragePoolKernel(StepKernel):
    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        axes = tuple(range(2, x.ndim))
        np.sum(x, axis=axes, keepdims=True, out=y)
        np.multiply(y, 1.0 / np.prod(x.shape[2:]), out=y)


class GemmKernel(StepKernel):
    def run(self, node, inputs, outputs, scratch):
        a, b = inputs[0], inputs[1]
        c = inputs[2] if len(inputs) > 2 else None
        attrs = node.attrs
        a = a.T if attrs.get("transA", 0) else a
        b = b.T if attrs.get("transB", 0) else b
        y = outputs[0]
        np.matmul(a, b, out=y)
        alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
        if alpha != 1.0:
            np.multiply(y, alpha, out=y)
        if c is not None and beta != 0.0:
            np.add(y, c if beta == 1.0 else c * beta, out=y)


class MatMulKernel(StepKernel):
    def run(self, node, inputs, outputs, scratch):
        np.matmul(inputs[0], inputs[1], out=outputs[0])


class CopyReshapeKernel(StepKernel):
    """Flatten/Reshape/Squeeze/Unsqueeze: the same bytes in a new shape."""

    def run(self, node, inputs, outputs, scratch):
        np.copyto(outputs[0], inputs[0].reshape(outputs[0].shape))


class ConcatKernel(StepKernel):
    def run(self, node, inputs, outputs, scratch):
        y = outputs[0]
        axis = node.attrs["axis"] % y.ndim
        start = 0
        for x in inputs:
            index = [slice(None)] * y.ndim
            index[axis] = slice(start, start + x.shape[axis])
            y[tuple(index)] = x
            start += x.shape[axis]


STEP_KERNELS: dict[str, StepKernel] = {
    "FusedConv": FusedConvKernel(),
    "Add": BinaryKernel(np.add),
    "Sub": BinaryKernel(np.subtract),
    "Mul": BinaryKernel(np.multiply),
    "GlobalAveragePool": GlobalAveragePoolKernel(),
    "Gemm": GemmKernel(),
    "MatMul": MatMulKernel(),
    "Flatten": CopyReshapeKernel(),
    "Reshape": CopyReshapeKernel(),
    "Squeeze": CopyReshapeKernel(),
    "Unsqueeze": CopyReshapeKernel(),
    "Concat": ConcatKernel(),
}


def step_kernel(node: Node, in_dtypes, out_dtypes) -> StepKernel | None:
    """The arena kernel for `node`, or None when it must run through the reference op."""
    kernel = STEP_KERNELS.get(node.op_type)
    if kernel is None:
        return None
    if any(d != np.float32 for d in list(in_dtypes) + list(out_dtypes) if d is not None):
        return None if node.op_type not in ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Concat") else kernel
    return kernel
