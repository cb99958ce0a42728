"""Fused ops (domain "edgerun") the passes create: FusedConv and InvertedResidual.

Their compute is the plain, unsplit composition of the reference conv and activation:
the oracle the split kernels are checked against.
"""
from __future__ import annotations

import numpy as np

from edgerun.errors import InvalidModelError
from edgerun.ir import Node, TensorInfo
from edgerun.kernels.native_steps import NativeFusedConvKernel
from edgerun.kernels.steps_conv import FusedConvAnyRankKernel
from edgerun.ops import register
from edgerun.ops.activation import apply_activation
from edgerun.ops.conv import conv_nd, weight_macs

DOMAIN = "edgerun"


def _invalid(node: Node, message: str) -> InvalidModelError:
    return InvalidModelError(f"{node.describe()}: {message}")


def _conv_output_dim(size, kernel, stride, pad_begin, pad_end, dilation):
    if not isinstance(size, int):
        return size
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def _attr_ints(node: Node, name: str, length: int, default: int | None = None) -> list[int]:
    value = node.attrs.get(name)
    if value is None and default is not None:
        return [default] * length
    if not isinstance(value, (list, tuple)) or len(value) != length or not all(isinstance(v, int) for v in value):
        raise _invalid(node, f"attribute {name!r} must be {length} ints, got {value!r}")
    return list(value)


def _positive(node: Node, name: str, values: list[int]) -> None:
    if any(v < 1 for v in values):
        raise _invalid(node, f"attribute {name!r} must be positive, got {values}")


def _non_negative(node: Node, name: str, values: list[int]) -> None:
    if any(v < 0 for v in values):
        raise _invalid(node, f"attribute {name!r} must not be negative, got {values}")


def _check_activation(node: Node, prefix: str = "") -> None:
    kind = node.attrs.get(f"{prefix}activation", "")
    params = node.attrs.get(f"{prefix}activation_params", [])
    try:
        apply_activation(np.zeros(1, np.float32), kind, params)
    except InvalidModelError as exc:
        raise _invalid(node, str(exc)) from None


# ---------------------------------------------------------------- FusedConv

def _fused_conv_attrs(node: Node, x_shape: tuple, w_shape: tuple) -> dict:
    spatial = len(w_shape) - 2
    if spatial < 1 or len(x_shape) != len(w_shape):
        raise _invalid(node, f"input rank {len(x_shape)} and weight rank {len(w_shape)} do not match "
                             f"a convolution")
    kernel = _attr_ints(node, "kernel_shape", spatial) if "kernel_shape" in node.attrs else list(w_shape[2:])
    if tuple(kernel) != tuple(w_shape[2:]):
        raise _invalid(node, f"kernel_shape {kernel} does not match weight shape {w_shape}")
    attrs = {
        "strides": _attr_ints(node, "strides", spatial, 1),
        "pads": _attr_ints(node, "pads", 2 * spatial, 0),
        "dilations": _attr_ints(node, "dilations", spatial, 1),
        "group": node.attrs.get("group", 1),
        "kernel": kernel,
    }
    _positive(node, "strides", attrs["strides"])
    _positive(node, "dilations", attrs["dilations"])
    _non_negative(node, "pads", attrs["pads"])
    group = attrs["group"]
    if not isinstance(group, int) or group < 1:
        raise _invalid(node, f"attribute 'group' must be a positive int, got {group!r}")
    channels = x_shape[1]
    if isinstance(channels, int) and (channels % group or channels // group != w_shape[1]):
        raise _invalid(node, f"input has {channels} channels but weight {w_shape} with group {group} "
                             f"expects {w_shape[1] * group}")
    if w_shape[0] % group:
        raise _invalid(node, f"{w_shape[0]} output channels are not divisible by group {group}")
    return attrs


def _check_bias(node: Node, bias_shape, out_channels: int, what: str = "bias") -> None:
    if bias_shape is not None and tuple(bias_shape) != (out_channels,):
        raise _invalid(node, f"{what} shape {tuple(bias_shape)} does not match {out_channels} output channels")


def _fused_conv_infer(node, inputs, opset):
    if len(inputs) < 2 or inputs[0] is None or inputs[1] is None:
        raise _invalid(node, "needs inputs X and W")
    x, w = inputs[0], inputs[1]
    if x.shape is None or w.shape is None or not all(isinstance(d, int) for d in w.shape):
        raise _invalid(node, "needs known input and weight shapes")
    attrs = _fused_conv_attrs(node, tuple(x.shape), tuple(w.shape))
    _check_bias(node, inputs[2].shape if len(inputs) > 2 and inputs[2] is not None else None, w.shape[0])
    _check_activation(node)
    spatial = len(w.shape) - 2
    pads = attrs["pads"]
    out_spatial = tuple(
        _conv_output_dim(x.shape[2 + i], w.shape[2 + i], attrs["strides"][i], pads[i], pads[spatial + i],
                         attrs["dilations"][i])
        for i in range(spatial))
    if any(isinstance(d, int) and d < 1 for d in out_spatial):
        raise _invalid(node, f"output spatial size {out_spatial} is empty for input {tuple(x.shape)}")
    out_shape = (x.shape[0], w.shape[0]) + out_spatial
    _check_sum(node, inputs[3].shape if len(inputs) > 3 and inputs[3] is not None else None, out_shape)
    return [TensorInfo(out_shape, np.dtype(x.dtype))]


def _check_sum(node: Node, sum_shape, out_shape) -> None:
    """The optional 4th input S (a residual fused by passes/fuse_add.py) has the output's shape:
    FusedConv then computes act(conv(X) + B + S)."""
    if len(node.inputs) > 4:
        raise _invalid(node, f"takes at most 4 inputs (X, W, B, S), got {len(node.inputs)}")
    if sum_shape is not None and tuple(sum_shape) != tuple(out_shape):
        raise _invalid(node, f"sum input shape {tuple(sum_shape)} does not match the output {tuple(out_shape)}")


def _fused_conv_compute(node, inputs, opset):
    if len(inputs) < 2 or inputs[0] is None or inputs[1] is None:
        raise _invalid(node, "needs inputs X and W")
    x, w = np.asarray(inputs[0]), np.asarray(inputs[1])
    b = inputs[2] if len(inputs) > 2 else None
    attrs = _fused_conv_attrs(node, x.shape, w.shape)
    _check_bias(node, None if b is None else np.shape(b), w.shape[0])
    _check_activation(node)
    y = conv_nd(x, w, b, strides=attrs["strides"], pads=attrs["pads"], dilations=attrs["dilations"],
                group=attrs["group"])
    if len(inputs) > 3 and inputs[3] is not None:
        _check_sum(node, np.shape(inputs[3]), y.shape)
        y = y + np.asarray(inputs[3], dtype=y.dtype)
    return [apply_activation(y, node.attrs.get("activation", ""), node.attrs.get("activation_params", []))]


# ---------------------------------------------------------------- InvertedResidual

def _block_int(node: Node, name: str, minimum: int) -> int:
    value = node.attrs.get(name)
    if not isinstance(value, int) or value < minimum:
        raise _invalid(node, f"attribute {name!r} must be an int >= {minimum}, got {value!r}")
    return value


def _block_pads(node: Node, name: str) -> list[int]:
    pads = _attr_ints(node, name, 4)
    _non_negative(node, name, pads)
    return pads


def _has_expansion(node: Node, present: list[bool]) -> bool:
    if present[1] != present[2]:
        raise _invalid(node, "expansion weight and bias must be both given or both omitted")
    return present[1]


def _block_stage_shapes(node: Node, x_shape: tuple, shapes: list[tuple | None]) -> tuple:
    """Validate the block's weights and attributes; return (hidden shape, output shape)."""
    if len(x_shape) != 4:
        raise _invalid(node, f"input must be NCHW, got shape {x_shape}")
    n, cin, h, w = x_shape
    expand = _has_expansion(node, [s is not None for s in shapes])
    if expand:
        ke = _block_int(node, "expand_kernel", 1)
        se = _block_int(node, "expand_stride", 1)
        pe = _block_pads(node, "expand_pads")
        _check_activation(node, "expand_")
        we = shapes[1]
        if len(we) != 4 or tuple(we[2:]) != (ke, ke) or (isinstance(cin, int) and we[1] != cin):
            raise _invalid(node, f"expansion weight shape {we} does not match input {x_shape} "
                                 f"and expand_kernel {ke}")
        hidden = we[0]
        _check_bias(node, shapes[2], hidden, "expansion bias")
        h = _conv_output_dim(h, ke, se, pe[0], pe[2], 1)
        w = _conv_output_dim(w, ke, se, pe[1], pe[3], 1)
    else:
        hidden = cin
    kd = _block_int(node, "dw_kernel", 1)
    sd = _block_int(node, "dw_stride", 1)
    pd = _block_pads(node, "dw_pads")
    _check_activation(node, "dw_")
    wd, wp = shapes[3], shapes[5]
    if wd is None or wp is None:
        raise _invalid(node, "needs depthwise and projection weights")
    if tuple(wd) != (hidden, 1, kd, kd):
        raise _invalid(node, f"depthwise weight shape {tuple(wd)} must be {(hidden, 1, kd, kd)}")
    _check_bias(node, shapes[4], hidden, "depthwise bias")
    if len(wp) != 4 or tuple(wp[1:]) != (hidden, 1, 1):
        raise _invalid(node, f"projection weight shape {tuple(wp)} must be (Cout, {hidden}, 1, 1)")
    cout = wp[0]
    _check_bias(node, shapes[6], cout, "projection bias")
    hidden_shape = (n, hidden, h, w)
    ho = _conv_output_dim(h, kd, sd, pd[0], pd[2], 1)
    wo = _conv_output_dim(w, kd, sd, pd[1], pd[3], 1)
    out_shape = (n, cout, ho, wo)
    if any(isinstance(d, int) and d < 1 for d in (h, w, ho, wo)):
        raise _invalid(node, f"block output would be empty for input {x_shape}")
    residual = node.attrs.get("residual", 0)
    if residual not in (0, 1):
        raise _invalid(node, f"attribute 'residual' must be 0 or 1, got {residual!r}")
    if residual and tuple(out_shape) != tuple(x_shape):
        raise _invalid(node, f"residual block needs output shape {out_shape} equal to input {x_shape}")
    return hidden_shape, out_shape


def _padded_inputs(inputs: list, count: int = 7) -> list:
    return list(inputs) + [None] * (count - len(inputs))


def _inverted_residual_infer(node, inputs, opset):
    inputs = _padded_inputs(inputs)
    if inputs[0] is None or inputs[0].shape is None:
        raise _invalid(node, "needs an input with a known shape")
    shapes = [None if i is None else tuple(i.shape) for i in inputs]
    _, out_shape = _block_stage_shapes(node, tuple(inputs[0].shape), shapes)
    return [TensorInfo(out_shape, np.dtype(inputs[0].dtype))]


def _inverted_residual_compute(node, inputs, opset):
    inputs = _padded_inputs(inputs)
    if inputs[0] is None:
        raise _invalid(node, "needs an input")
    x = np.asarray(inputs[0])
    x_we_be_wd_bd_wp_bp = [None if i is None else np.asarray(i) for i in inputs]
    _, we, be, wd, bd, wp, bp = x_we_be_wd_bd_wp_bp
    _block_stage_shapes(node, x.shape, [None if a is None else a.shape for a in x_we_be_wd_bd_wp_bp])
    a = node.attrs
    hidden = x
    if we is not None:
        stride = a["expand_stride"]
        hidden = conv_nd(x, we, be, strides=[stride, stride], pads=a["expand_pads"], dilations=[1, 1], group=1)
        hidden = apply_activation(hidden, a.get("expand_activation", ""), a.get("expand_activation_params", []))
    stride = a["dw_stride"]
    dw = conv_nd(hidden, wd, bd, strides=[stride, stride], pads=a["dw_pads"], dilations=[1, 1],
                 group=wd.shape[0])
    dw = apply_activation(dw, a.get("dw_activation", ""), a.get("dw_activation_params", []))
    y = conv_nd(dw, wp, bp, strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1)
    if a.get("residual", 0):
        y = y + x
    return [y.astype(x.dtype, copy=False)]


register("FusedConv", _fused_conv_infer, _fused_conv_compute, domain=DOMAIN, macs=weight_macs,
         step=FusedConvAnyRankKernel(), native=NativeFusedConvKernel)
register("InvertedResidual", _inverted_residual_infer, _inverted_residual_compute, domain=DOMAIN)
