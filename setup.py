"""Builds the optional C extension of edgerun (metadata lives in pyproject.toml).

The kernels are compiled once per instruction-set variant into one extension module each
(edgerun.kernels._native_<isa>); at import, edgerun.kernels._native picks the best variant the
running CPU supports (edgerun/kernels/isa.py; EDGERUN_ISA=avx512|avx2|sse2 forces one). On x86-64
the build holds AVX-512, AVX2+FMA and baseline SSE2 variants, so a wheel (`pip wheel .`) is correct
on any x86-64 CPU whatever machine built it: nothing here asks the build machine's CPU. Elsewhere
(aarch64, where NEON is baseline, and other targets) one "generic" variant is built.

If a variant cannot be compiled the install still succeeds without it; if none can, edgerun runs its
numpy kernels (edgerun.kernels.backend() then says "numpy" and warns once).

Environment:
  EDGERUN_NO_NATIVE=1        skip the extension entirely
  EDGERUN_MARCH_NATIVE=1     build one variant "native" with -march=native instead (the binary then
                             only runs on CPUs like the build machine)
  EDGERUN_NO_AVX512=1        do not build the AVX-512 variant
  EDGERUN_ISA_VARIANTS=a,b   build only these x86-64 variants (e.g. sse2 for a quick check)
  EDGERUN_EXTRA_CFLAGS=...   extra compiler flags for every variant (e.g. sanitizers, see tools/sanitize.sh)
  EDGERUN_EXTRA_LDFLAGS=...  extra linker flags
"""
import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE_DIR = os.path.join("edgerun", "kernels", "native")
# Every source of the kernels module, compiled once per variant: a new kernel file joins the
# dispatch by adding its name here (one name per line keeps parallel additions easy to merge).
NATIVE_SOURCE_NAMES = [
    "module.c",
    "block.c",
    "gemm.c",
    "depthwise.c",
    "activation.c",
    "steps.c",
    "threadpool.c",
    "pybuffers.c",
    "segment.c",
    "conv.c",
    "fused_steps.c",
    "quant.c",
]
NATIVE_HEADERS = ["kernels.h", "pybuffers.h", "threadpool.h"]
# -fno-trapping-math lets GCC if-convert (vectorise) selects such as leaky ReLU; edgerun never
# relies on floating-point exceptions.
PORTABLE_FLAGS = ["-O3", "-std=c99", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math", "-pthread"]
# x86-64 variants, best first (the order edgerun/kernels/isa.py prefers). AVX-512: explicit
# 16-float vectors in the GEMM; loops the compiler vectorises itself (depthwise rows of 7..56
# floats) stay at 8 floats, which suits them better. SSE2 is the x86-64 baseline.
X86_VARIANTS = [
    ("avx512", ["-mavx512f", "-mavx2", "-mfma", "-mprefer-vector-width=256"]),
    ("avx2", ["-mavx2", "-mfma"]),
    ("sse2", []),
]


def _warn(message: str) -> None:
    bar = "*" * 78
    print(f"\n{bar}\nWARNING: {message}\nedgerun will install without it (with no variant at all, it runs "
          f"the slower numpy kernels).\n{bar}\n", file=sys.stderr)


def _is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def isa_variants() -> list[tuple[str, list[str]]]:
    """(name, compiler flags) of every variant this build compiles."""
    if os.environ.get("EDGERUN_MARCH_NATIVE") == "1":
        return [("native", ["-march=native"])]
    if not _is_x86_64():
        return [("generic", [])]
    only = [name for name in os.environ.get("EDGERUN_ISA_VARIANTS", "").split(",") if name]
    return [(name, flags) for name, flags in X86_VARIANTS
            if not (name == "avx512" and os.environ.get("EDGERUN_NO_AVX512") == "1") and (not only or name in only)]


def variant_compile_flags(compiler, isa_flags: list[str]) -> list[str]:
    if getattr(compiler, "compiler_type", "") == "msvc":
        return ["/O2"]
    return PORTABLE_FLAGS + isa_flags + os.environ.get("EDGERUN_EXTRA_CFLAGS", "").split()


class OptionalBuildExt(build_ext):
    """build_ext that turns a compile failure into a warning instead of a failed install."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - compiler missing, headers missing, ...
            _warn(f"the native extension could not be built ({exc})")

    def build_extension(self, ext):
        isa_flags = getattr(ext, "isa_flags", [])
        if getattr(self.compiler, "compiler_type", "") == "msvc" and isa_flags:
            return  # MSVC builds the baseline variant only
        ext.extra_compile_args = variant_compile_flags(self.compiler, isa_flags)
        ext.extra_link_args = ["-pthread"] + os.environ.get("EDGERUN_EXTRA_LDFLAGS", "").split()
        print(f"edgerun: compiling {ext.name} with {' '.join(ext.extra_compile_args)}")
        build_temp = self.build_temp  # each variant's objects apart: the sources are the same files
        self.build_temp = os.path.join(build_temp, ext.name.rsplit(".", 1)[-1])
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            _warn(f"compiling {ext.name} failed ({exc})")
        finally:
            self.build_temp = build_temp

    def copy_extensions_to_source(self):
        # editable installs copy the built libraries next to the sources; the extensions are
        # optional, so a variant that did not build is skipped
        try:
            super().copy_extensions_to_source()
        except Exception as exc:  # noqa: BLE001
            _warn(f"the native extension was not built ({exc})")


def _variant_extension(name: str, isa_flags: list[str]) -> Extension:
    module = f"_native_{name}"
    ext = Extension(f"edgerun.kernels.{module}",
                    sources=[os.path.join(NATIVE_DIR, source) for source in NATIVE_SOURCE_NAMES],
                    depends=[os.path.join(NATIVE_DIR, header) for header in NATIVE_HEADERS],
                    define_macros=[("ER_MODULE", module), ("ER_ISA_NAME", name)], optional=True)
    ext.isa_flags = isa_flags
    return ext


def extensions():
    if os.environ.get("EDGERUN_NO_NATIVE") == "1":
        return []
    cpu_probe = Extension("edgerun.kernels._cpu", sources=[os.path.join(NATIVE_DIR, "cpu.c")], optional=True)
    cpu_probe.isa_flags = []
    return [cpu_probe] + [_variant_extension(name, flags) for name, flags in isa_variants()]


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
