"""Kernels that run one fused inverted-residual block inside the arena.

Two backends, `numpy` (the oracle, numpy_block.py) and `native` (the C extension
`edgerun.kernels._native`, native.py), each declare their block kernel's contract beside it,
`block_contract(geom, sched, threads) -> scheduler.KernelContract` (scratch buffers and thread
split), and share `run_block(x, out, weights, geom, sched, scratch)` / `block_call(..., contract)`.
"""
from __future__ import annotations

import os
import warnings

from edgerun.errors import EdgerunError
# the activation table lives in its own module; re-exported here for older imports
from edgerun.kernels.activations import _PARAM_COUNTS, ACTIVATION_KINDS, Activation  # noqa: F401
from edgerun.kernels.block_args import BlockWeights, check_block_args, holds_scratch  # noqa: F401
from edgerun.kernels import native, numpy_block

BACKENDS = ("numpy", "native")

_native_state: dict = {}


def _native_import_error() -> str | None:
    """None when the C extension imports, else why it does not (cached)."""
    if "error" not in _native_state:
        try:
            from edgerun.kernels import _native  # noqa: F401
            _native_state["error"] = None
        except ImportError as exc:
            _native_state["error"] = str(exc)
    return _native_state["error"]


def native_available() -> bool:
    return _native_import_error() is None


def backend() -> str:
    """Which kernels run: see _choose_backend."""
    return _choose_backend()


def _choose_backend() -> str:
    """Which kernels run: "native" when the C extension imports, else "numpy".

    EDGERUN_KERNELS=numpy|native forces one; forcing native when it cannot load raises.
    """
    forced = os.environ.get("EDGERUN_KERNELS", "").strip().lower()
    if forced and forced not in BACKENDS:
        raise EdgerunError(f"EDGERUN_KERNELS={forced!r}: expected one of {BACKENDS}")
    if forced == "numpy":
        return "numpy"
    error = _native_import_error()
    if forced == "native" and error is not None:
        raise EdgerunError(f"EDGERUN_KERNELS=native but the C extension edgerun.kernels._native "
                           f"cannot be imported ({error}); reinstall with a C compiler available")
    if error is not None:
        if not _native_state.get("warned"):
            _native_state["warned"] = True
            warnings.warn(f"edgerun native kernels unavailable ({error}); the numpy kernels run",
                          RuntimeWarning, stacklevel=2)
        return "numpy"
    return "native"


def block_kernel(backend_name: str):
    """The module of a backend's block kernel: it defines block_contract(geom, sched, threads) and
    block_call / run_block honouring it."""
    if backend_name == "numpy":
        return numpy_block
    if backend_name == "native":
        return native
    raise EdgerunError(f"unknown kernel backend {backend_name!r}; expected one of {BACKENDS}")


def block_contract(geom, sched, backend_name: str, threads: int = 1):
    """The backend block kernel's contract (scheduler.KernelContract) for this geometry, schedule, threads."""
    return block_kernel(backend_name).block_contract(geom, sched, threads)


def block_scratch(geom, sched, backend_name: str, threads: int = 1) -> dict[str, int]:
    """Scratch bytes by name the backend's block kernel needs (its contract's scratch)."""
    return block_contract(geom, sched, backend_name, threads).scratch_bytes()


def run_block(x, out, weights, geom, sched, scratch, backend=None, threads=1):
    """Run one inverted-residual block for one image; `out` is fully written.

    backend: "numpy" / "native" / None (see backend()); threads: pthreads of the native kernel
    (the numpy kernel runs on one); the scratch is what block_contract(geom, sched, backend, threads)
    declares."""
    block_call(x, out, weights, geom, sched, scratch, backend, threads)()


def block_call(x, out, weights, geom, sched, scratch, backend=None, threads=1, contract=None):
    """A function of no arguments that runs the block; the arguments are checked here, once, against
    `contract` (default: the backend's block_contract(geom, sched, threads)), which must be for `sched`
    and `threads` (a model runs the same block on the same arena buffers every time)."""
    kernel = block_kernel(backend or _choose_backend())
    if contract is None:
        contract = kernel.block_contract(geom, sched, threads)
    elif contract.schedule != sched or contract.threads != threads:
        raise EdgerunError(f"the contract is for schedule {contract.schedule} on {contract.threads} thread(s), "
                           f"not {sched} on {threads}")
    return kernel.block_call(x, out, weights, geom, contract, scratch)
