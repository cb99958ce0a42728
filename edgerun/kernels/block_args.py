"""The arguments every block kernel takes: the block's weights in the layouts the kernels walk, and the
checks of arrays and scratch against a geometry and a contract (scheduler.KernelContract)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgerun.errors import EdgerunError
from edgerun.kernels import layouts
from edgerun.kernels.activations import Activation


def _f32(array) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


@dataclass(frozen=True)
class BlockWeights:
    """Weights of one inverted-residual block, plus layouts the kernels want.

    we (E, Cin, ke, ke) or None, be (E,), wd (E, kd, kd), bd (E,), wp (Cout, E), bp (Cout,).
    Derived: we_t (Cin*ke*ke, E) and wp_t (E, Cout), which the C block reads, and wd_taps (kd*kd, E),
    which the numpy block reads (each given, e.g. a bundle's stored layouts via from_node, or made here):
    any chunk of hidden channels is a contiguous slice of the taps / rows the kernels walk.
    """

    we: np.ndarray | None
    be: np.ndarray | None
    wd: np.ndarray
    bd: np.ndarray
    wp: np.ndarray
    bp: np.ndarray
    expand_act: Activation = Activation()
    dw_act: Activation = Activation()
    we_t: np.ndarray | None = None
    wp_t: np.ndarray | None = None
    wd_taps: np.ndarray | None = None

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        hidden = self.wd.shape[0]
        if self.we is not None:
            put("we", _f32(self.we))
            put("be", _f32(self.be if self.be is not None else np.zeros(hidden)))
            if self.we.ndim != 4 or self.we.shape[0] != hidden or self.be.shape != (hidden,):
                raise EdgerunError(f"expansion weights {self.we.shape} do not match {hidden} hidden channels")
            put("we_t", _derived("we_t", self.we_t, self.we.reshape(hidden, -1)))
        else:
            put("be", None)
            put("we_t", None)
        put("wd", _f32(np.reshape(self.wd, (hidden,) + tuple(self.wd.shape[-2:]))))
        put("bd", _f32(self.bd))
        put("wp", _f32(np.reshape(self.wp, self.wp.shape[:2])))
        put("bp", _f32(self.bp))
        if self.wd.shape[1] != self.wd.shape[2] or self.bd.shape != (hidden,):
            raise EdgerunError(f"depthwise weights {self.wd.shape} / bias {self.bd.shape} are inconsistent")
        if self.wp.shape[1] != hidden or self.bp.shape != (self.wp.shape[0],):
            raise EdgerunError(f"projection weights {self.wp.shape} / bias {self.bp.shape} do not match "
                               f"{hidden} hidden channels")
        put("wp_t", _derived("wp_t", self.wp_t, self.wp))
        put("wd_taps", _derived("wd_taps", self.wd_taps, self.wd.reshape(hidden, -1)))

    @property
    def hidden_channels(self) -> int:
        return self.wd.shape[0]

    @property
    def dw_kernel(self) -> int:
        return self.wd.shape[1]

    @property
    def expand_kernel(self) -> int:
        return 0 if self.we is None else self.we.shape[2]

    @classmethod
    def from_arrays(cls, we, be, wd, bd, wp, bp, expand_act=Activation(), dw_act=Activation(), we_t=None,
                    wp_t=None, wd_taps=None):
        """From ONNX-layout arrays: We (E,Cin,ke,ke) or None, Wd (E,1,kd,kd), Wp (Cout,E,1,1)."""
        return cls(we=we, be=be, wd=wd, bd=bd, wp=wp, bp=bp, expand_act=expand_act, dw_act=dw_act, we_t=we_t,
                   wp_t=wp_t, wd_taps=wd_taps)

    @classmethod
    def from_node(cls, node, arrays: dict[str, np.ndarray]) -> "BlockWeights":
        """From an `edgerun.InvertedResidual` node; `arrays` maps its weight input names to arrays."""
        def tensor(i):
            name = node.input(i)
            if not name:
                return None
            if name not in arrays:
                raise EdgerunError(f"{node.describe()}: weight {name!r} is not a known constant")
            return arrays[name]

        def activation(prefix):
            return Activation(node.attrs.get(f"{prefix}_activation", ""),
                              tuple(node.attrs.get(f"{prefix}_activation_params", ())))

        def transposed(i, original_read=False):   # a kernel's layout of a weight (a bundle may store it)
            array = tensor(i)
            if array is None or np.asarray(array).dtype != np.float32:
                return None
            return layouts.transposed(node.input(i), np.reshape(array, (np.shape(array)[0], -1)), original_read)

        wd, bd, wp, bp = tensor(3), tensor(4), tensor(5), tensor(6)
        if bd is None:
            bd = np.zeros(np.shape(wd)[0], np.float32)
        if bp is None:
            bp = np.zeros(np.shape(wp)[0], np.float32)
        return cls.from_arrays(tensor(1), tensor(2), wd, bd, wp, bp,
                               activation("expand"), activation("dw"), we_t=transposed(1), wp_t=transposed(5),
                               wd_taps=transposed(3, original_read=True))   # the C block reads wd itself


def _derived(name: str, given, matrix: np.ndarray) -> np.ndarray:
    """matrix.T as C-contiguous float32: `given` when it is that layout (checked), else made here."""
    if given is None:
        return _f32(matrix.T)
    _check_array(name, given, matrix.shape[::-1])
    return given


def _check_array(name: str, array, shape: tuple[int, ...], dtypes=(np.float32,)) -> None:
    if not isinstance(array, np.ndarray):
        raise EdgerunError(f"{name}: expected a numpy array, got {type(array).__name__}")
    if array.dtype not in dtypes:
        raise EdgerunError(f"{name}: expected {' or '.join(np.dtype(d).name for d in dtypes)}, got {array.dtype}")
    if not array.flags.c_contiguous:
        raise EdgerunError(f"{name}: must be C-contiguous")
    if array.shape != shape:
        raise EdgerunError(f"{name}: expected shape {shape}, got {array.shape}")


def _stored_dtype(geom):
    """The block's storage: float16 for geom.itemsize 2 (a float16 plan; the input may be a float32 feed)."""
    if geom.itemsize not in (2, 4):
        raise EdgerunError(f"block geometry itemsize {geom.itemsize}: expected 4 (float32) or 2 (float16)")
    return np.float16 if geom.itemsize == 2 else np.float32


def holds_scratch(scratch, contract) -> bool:
    """Whether `scratch` has every buffer the contract (scheduler.KernelContract) declares, big enough."""
    if not isinstance(scratch, dict):
        return False
    for buf in contract.scratch:
        view = scratch.get(buf.name)
        if not isinstance(view, np.ndarray) or view.nbytes < buf.nbytes:
            return False
    return True


def check_block_args(x, out, weights, geom, contract, scratch) -> None:
    """Raise EdgerunError unless the arrays match the geometry and the scratch holds every buffer the
    contract (scheduler.KernelContract) declares, big enough (all its per-thread slices)."""
    stored = _stored_dtype(geom)
    _check_array("x", x, (geom.in_channels, geom.in_height, geom.in_width), (stored, np.float32))
    _check_array("out", out, (geom.out_channels, geom.out_height, geom.out_width), (stored,))
    if np.may_share_memory(x, out):
        raise EdgerunError("x and out must not overlap")
    if not isinstance(weights, BlockWeights):
        raise EdgerunError(f"weights: expected BlockWeights, got {type(weights).__name__}")
    if (weights.hidden_channels != geom.hidden_channels or weights.dw_kernel != geom.dw_kernel
            or weights.expand_kernel != geom.expand_kernel or weights.wp.shape[0] != geom.out_channels
            or (weights.we is not None and weights.we.shape[1] != geom.in_channels)):
        raise EdgerunError(f"weights (hidden {weights.hidden_channels}, dw kernel {weights.dw_kernel}, "
                           f"expand kernel {weights.expand_kernel}, out {weights.wp.shape[0]}) "
                           f"do not match the block geometry {geom}")
    for buf in contract.scratch:
        view = scratch.get(buf.name) if isinstance(scratch, dict) else None
        if view is None:
            raise EdgerunError(f"scratch {buf.name!r} ({buf.nbytes} bytes) is missing")
        if not isinstance(view, np.ndarray) or view.dtype != stored or view.ndim != 1 \
                or not view.flags.c_contiguous:
            raise EdgerunError(f"scratch {buf.name!r}: expected a 1-D C-contiguous {np.dtype(stored).name} array")
        if view.nbytes < buf.nbytes:
            slices = f" ({buf.slices} slices of {buf.slice_bytes})" if buf.slices > 1 else ""
            raise EdgerunError(f"scratch {buf.name!r} holds {view.nbytes} bytes, the block needs "
                               f"{buf.nbytes}{slices}")
