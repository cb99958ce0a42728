"""Which instruction-set variant of the native kernels runs.

setup.py compiles the kernels once per variant into edgerun.kernels._native_<isa> (x86-64:
avx512, avx2 (with FMA), sse2; elsewhere generic; `EDGERUN_MARCH_NATIVE=1` builds one "native").
edgerun.kernels._native is the one chosen here, once per process: the best variant that was built
and that this CPU runs (edgerun.kernels._cpu asks the CPU, never the build machine).
EDGERUN_ISA=avx512|avx2|sse2 (or generic / native) forces one; a variant the CPU lacks or the build
did not produce is an error, not a silent fallback.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

from edgerun.errors import EdgerunError

# best first; "native" (-march=native) and "generic" (non-x86 baseline) are the only variant of
# their builds
VARIANTS = ("native", "avx512", "avx2", "sse2", "generic")
BASELINE_VARIANTS = ("native", "generic")
ENV_VAR = "EDGERUN_ISA"
_PACKAGE = "edgerun.kernels"


def module_name(isa: str) -> str:
    return f"{_PACKAGE}._native_{isa}"


def built_variants() -> tuple[str, ...]:
    """The variants whose extension module exists in this install, best first."""
    return tuple(isa for isa in VARIANTS if importlib.util.find_spec(module_name(isa)) is not None)


def cpu_variants() -> tuple[str, ...]:
    """The variants this CPU runs, best first (the baseline ones always)."""
    try:
        from edgerun.kernels import _cpu
    except ImportError as exc:
        raise ImportError(f"the CPU probe edgerun.kernels._cpu is not built ({exc})") from exc
    return tuple(_cpu.supported_isas()) + BASELINE_VARIANTS


def runnable_variants() -> tuple[str, ...]:
    """Variants built and runnable here, best first."""
    cpu = cpu_variants()
    return tuple(isa for isa in built_variants() if isa in cpu)


def choose_variant() -> str:
    """The variant to load: EDGERUN_ISA's, or the best runnable one. ImportError when none is built;
    EdgerunError when EDGERUN_ISA names an unknown variant or one this CPU or build lacks."""
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced and forced not in VARIANTS:
        raise EdgerunError(f"{ENV_VAR}={forced!r}: expected one of {', '.join(VARIANTS)}")
    built = built_variants()
    if not built:
        raise ImportError("no variant of the native kernels is built (edgerun.kernels._native_<isa>)")
    cpu = cpu_variants()
    if forced:
        if forced not in built:
            raise EdgerunError(f"{ENV_VAR}={forced}: this build of the native kernels has no {forced} variant "
                               f"(built: {', '.join(built)})")
        if forced not in cpu:
            raise EdgerunError(f"{ENV_VAR}={forced}: this CPU does not support {forced} "
                               f"(it runs: {', '.join(isa for isa in built if isa in cpu) or 'none of the built'})")
        return forced
    for isa in built:
        if isa in cpu:
            return isa
    raise ImportError(f"this CPU runs none of the built native kernel variants ({', '.join(built)})")


def load_variant():
    """The chosen variant's extension module (imported)."""
    return importlib.import_module(module_name(choose_variant()))
