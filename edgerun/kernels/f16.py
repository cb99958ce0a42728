"""Float16 activation storage: the arena holds float16, the arithmetic runs in float32.

One decision lives here: which tensors a plan stores in float16 (`storage_dtype`: every float32 activation
when the session's activation_dtype is "float16"; caller inputs and returned outputs stay float32). The rest
are the two ways a step reads and writes float16 storage while computing in float32:

- in bounded pieces (`matmul_into`; numpy ufuncs with `out=` convert through their small iterator buffers):
  the fused block (numpy_block) runs this way with every one of its scratch buffers in float16 too;
- 2-D FusedConv (`HalfFusedConvKernel`, scratch in float16 too), GlobalAveragePool (float32 sums), the pools,
  SqueezeExcite and the binary ufuncs run on float16 directly (`half_kernel` picks them), and so do the kernels
  that only move bytes (`MOVES_BYTES`);
- through planned float32 staging (`StagedKernel`): a step whose kernel knows only float32 gets a float32
  copy of each float16 input and a float32 output buffer, both planned scratch of the step (their bytes are in
  the plan as `f16.in<i>` / `f16.out<j>`), converted on entry and exit.
"""
from __future__ import annotations

import numpy as np

from edgerun.kernels.activations import Activation, apply_inplace
from edgerun.kernels.steps_se import SqueezeExciteKernel
from edgerun.kernels.numpy_steps import (AveragePoolKernel, BinaryKernel, FusedConvKernel, GlobalAveragePoolKernel,
                                         MaxPoolKernel, StepKernel, _depthwise, _im2col_fill, _is_depthwise,
                                         _is_grouped_pointwise, _is_pointwise, conv_band_rows)

ACTIVATION_DTYPES = ("float32", "float16")
FLOAT16 = np.dtype(np.float16)
FLOAT32 = np.dtype(np.float32)
# float32 bytes a matmul over float16 operands may hold outside the arena at once (one column piece of
# its right operand and of its result): well inside the 64 KiB measured-versus-planned allowance
PIECE_BYTES = 16 * 1024
# ops whose any-dtype arena kernels only move bytes (or cast them): they run on float16 storage as they are.
# Other any-dtype kernels (Resize, ReduceMean, the quantised ops) compute, and are staged.
MOVES_BYTES = frozenset({"Identity", "Dropout", "Flatten", "Reshape", "Transpose", "Concat", "Split", "Slice",
                         "Squeeze", "Unsqueeze", "Gather", "Cast", "ConstantOfShape", "Pad", "ChannelShuffle"})


def storage_dtype(dtype, activation_dtype: str) -> np.dtype:
    """The dtype an activation of graph dtype `dtype` is stored in for a plan of `activation_dtype`."""
    dtype = np.dtype(dtype)
    if activation_dtype == "float16" and dtype == FLOAT32:
        return FLOAT16
    return dtype


def matmul_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b (2-D) computed in float32. All float32: one np.matmul. Otherwise (float16 `b` or `out`)
    column pieces of at most PIECE_BYTES float32 bytes: numpy's own mixed-dtype matmul would copy the
    whole of `b` and `out` to float32 outside the arena."""
    if a.dtype == b.dtype == out.dtype == FLOAT32:
        np.matmul(a, b, out=out)
        return
    a32 = a if a.dtype == FLOAT32 else a.astype(np.float32)
    rows, inner = a32.shape
    columns = out.shape[1]
    step = max(1, min(columns, PIECE_BYTES // (4 * (rows + inner))))
    for c0 in range(0, columns, step):
        c1 = min(columns, c0 + step)
        piece = b[:, c0:c1] if b.dtype == FLOAT32 else b[:, c0:c1].astype(np.float32)
        if out.dtype == FLOAT32:
            np.matmul(a32, piece, out=out[:, c0:c1])
        else:
            out[:, c0:c1] = np.matmul(a32, piece)


def staging_names(count: int, prefix: str) -> list[str]:
    return [f"f16.{prefix}{i}" for i in range(count)]


class StagedKernel(StepKernel):
    """A float32 arena kernel run on float16 storage: each float16 input is converted into a float32
    scratch copy, the kernel writes float32 scratch outputs, which are converted into the float16 outputs.
    `staged_in` / `staged_out`: which inputs / outputs are stored in float16 (others pass through)."""

    def __init__(self, inner: StepKernel, staged_in: list[bool], staged_out: list[bool]):
        self.inner = inner
        self.staged_in = list(staged_in)
        self.staged_out = list(staged_out)

    def supports(self, node) -> bool:
        return self.inner.supports(node)

    def prepare(self, node, constants) -> None:
        self.inner.prepare(node, constants)

    def scratch_bytes(self, node, in_shapes, out_shapes) -> dict[str, int]:
        sizes = dict(self.inner.scratch_bytes(node, in_shapes, out_shapes) or {})
        for name, shape, staged in zip(staging_names(len(in_shapes), "in"), in_shapes, self.staged_in):
            if staged and shape is not None:
                sizes[name] = int(np.prod(shape, dtype=np.int64)) * 4
        for name, shape, staged in zip(staging_names(len(out_shapes), "out"), out_shapes, self.staged_out):
            if staged:
                sizes[name] = int(np.prod(shape, dtype=np.int64)) * 4
        return sizes

    def run(self, node, inputs, outputs, scratch) -> None:
        staged_inputs = [self._float32_copy(x, scratch[name]) if staged and x is not None else x
                         for x, name, staged in zip(inputs, staging_names(len(inputs), "in"), self.staged_in)]
        names = staging_names(len(outputs), "out")
        staged_outputs = [_shaped(scratch[name], y.shape) if staged else y
                          for y, name, staged in zip(outputs, names, self.staged_out)]
        self.inner.run(node, staged_inputs, staged_outputs, scratch)
        for y, y32, staged in zip(outputs, staged_outputs, self.staged_out):
            if staged:
                np.copyto(y, y32, casting="same_kind")

    @staticmethod
    def _float32_copy(x: np.ndarray, buffer: np.ndarray) -> np.ndarray:
        copy = _shaped(buffer, x.shape)
        np.copyto(copy, x)
        return copy


def _shaped(buffer: np.ndarray, shape) -> np.ndarray:
    return buffer[:int(np.prod(shape, dtype=np.int64))].reshape(shape)


class HalfFusedConvKernel(FusedConvKernel):
    """FusedConvKernel on float16 storage: the same bands and taps, scratch in float16 (half the bytes),
    matrix products in bounded float32 pieces (matmul_into). 2-D convolutions only (`supports`)."""

    scratch_dtype = FLOAT16

    def scratch_bytes(self, node, in_shapes, out_shapes):
        return {name: size // 2 for name, size in super().scratch_bytes(node, in_shapes, out_shapes).items()}

    def run(self, node, inputs, outputs, scratch):
        x, w, b = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None
        s = inputs[3] if len(inputs) > 3 else None
        for n in range(x.shape[0]):
            self._run_half_image(node, x[n], w, b, outputs[0][n], scratch, None if s is None else s[n])

    def _run_half_image(self, node, x, w, b, y, scratch, s) -> None:
        cin, cout = x.shape[0], y.shape[0]
        if _is_depthwise(node, cin, cout):
            _depthwise(x, w, y, node.attrs, scratch["tap"])
        elif _is_pointwise(node):
            matmul_into(w.reshape(cout, cin), x.reshape(cin, -1), y.reshape(cout, -1))
        elif _is_grouped_pointwise(node, cin, cout):
            group = node.attrs["group"]
            cg, og = cin // group, cout // group
            for g in range(group):
                matmul_into(w[g * og:(g + 1) * og].reshape(og, cg), x[g * cg:(g + 1) * cg].reshape(cg, -1),
                            y[g * og:(g + 1) * og].reshape(og, -1))
        else:
            _half_im2col_conv(x, w, y, node.attrs, scratch["im2col"])
        if b is not None:
            np.add(y, b.reshape(-1, 1, 1), out=y)
        if s is not None:
            np.add(y, s, out=y)
        activation = Activation(node.attrs.get("activation", ""), tuple(node.attrs.get("activation_params", ())))
        apply_inplace(y.reshape(-1), activation, scratch.get("act"))


def _half_im2col_conv(x, w, y, attrs, col_scratch) -> None:
    """numpy_steps._im2col_conv with float16 taps and matmul_into (same bands: conv_band_rows)."""
    cin = x.shape[0]
    cout, ho, wo = y.shape
    kh, kw = attrs["kernel_shape"]
    group = attrs.get("group", 1)
    cg, og = cin // group, cout // group
    band = conv_band_rows(cin * kh * kw, ho, wo)
    for row0 in range(0, ho, band):
        rows = min(band, ho - row0)
        cols = col_scratch[: cg * kh * kw * rows * wo].reshape(cg, kh, kw, rows, wo)
        for g in range(group):
            _im2col_fill(x[g * cg:(g + 1) * cg], cols, attrs, row0)
            matmul_into(w[g * og:(g + 1) * og].reshape(og, -1), cols.reshape(cg * kh * kw, rows * wo),
                        y[g * og:(g + 1) * og, row0:row0 + rows].reshape(og, rows * wo))


class HalfGlobalAveragePoolKernel(GlobalAveragePoolKernel):
    """GlobalAveragePool of float16 storage: each (image, channel) row summed in float32."""

    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        rows = int(np.prod(x.shape[:2]))
        flat_y = y.reshape(rows)
        np.add.reduce(x.reshape(rows, -1), axis=1, dtype=np.float32, out=flat_y)
        np.multiply(flat_y, np.float32(1.0 / np.prod(x.shape[2:])), out=flat_y)


def half_kernel(numpy_step, node, in_shapes) -> StepKernel | None:
    """The kernel that runs `node` on float16 storage directly, or None (then it is staged): 2-D FusedConv,
    GlobalAveragePool, Max/AveragePool and the binary ufuncs (numpy converts through its small ufunc buffers
    and computes each operation in float32; a sum of taps rounds to float16 after each tap)."""
    if isinstance(numpy_step, FusedConvKernel) and in_shapes and in_shapes[0] is not None \
            and len(in_shapes[0]) == 4 and numpy_step.supports(node):
        return HalfFusedConvKernel()
    if type(numpy_step) is GlobalAveragePoolKernel:
        return HalfGlobalAveragePoolKernel()
    if type(numpy_step) is SqueezeExciteKernel:   # float32 scratch; np.mean of float16 sums in float32
        return numpy_step
    if type(numpy_step) in (BinaryKernel, MaxPoolKernel, AveragePoolKernel) and numpy_step.supports(node):
        return numpy_step
    return None
