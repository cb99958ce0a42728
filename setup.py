"""Builds the optional C extension edgerun.kernels._native (metadata lives in pyproject.toml).

If the extension cannot be compiled the install still succeeds and edgerun runs its numpy
kernels (edgerun.kernels.backend() then says "numpy" and warns once).

Environment:
  EDGERUN_NO_NATIVE=1        skip the extension entirely
  EDGERUN_MARCH_NATIVE=1     compile with -march=native (the binary then only runs on CPUs
                             like the build machine)
  EDGERUN_EXTRA_CFLAGS=...   extra compiler flags (e.g. sanitizers, see tools/sanitize.sh)
  EDGERUN_EXTRA_LDFLAGS=...  extra linker flags
  EDGERUN_NO_AVX512=1        do not use AVX-512 even where the build machine has it
By default the flags are portable; on x86-64 -mavx2 -mfma (and -mavx512f) are added only
when both the compiler accepts them and the build machine's CPU supports them.
"""
import os
import platform
import shutil
import subprocess
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE_DIR = os.path.join("edgerun", "kernels", "native")
NATIVE_SOURCES = [os.path.join(NATIVE_DIR, name)
                  for name in ("module.c", "block.c", "gemm.c", "depthwise.c", "activation.c", "steps.c",
                               "threadpool.c", "pybuffers.c", "fused_steps.c")]
# -fno-trapping-math lets GCC if-convert (vectorise) selects such as leaky ReLU; edgerun never
# relies on floating-point exceptions.
PORTABLE_FLAGS = ["-O3", "-std=c99", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math", "-pthread"]

CPU_CHECK = r"""
#include <stdio.h>
int main(void) {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return 1;
    puts(__builtin_cpu_supports("avx512f") ? "avx512f" : "avx2");
    return 0;
}
"""


def _warn(message: str) -> None:
    bar = "*" * 78
    print(f"\n{bar}\nWARNING: {message}\nedgerun will install without its native kernels and run the "
          f"(slower) numpy kernels.\n{bar}\n", file=sys.stderr)


def _is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def _build_machine_simd(compiler) -> str:
    """"avx512f", "avx2" (with FMA) or "" from a tiny program asking the CPU; failure means ""."""
    workdir = tempfile.mkdtemp(prefix="edgerun-cpucheck-")
    try:
        source = os.path.join(workdir, "cpucheck.c")
        with open(source, "w") as handle:
            handle.write(CPU_CHECK)
        objects = compiler.compile([source], output_dir=workdir,
                                   extra_postargs=["-mavx2", "-mfma", "-mavx512f"])
        program = os.path.join(workdir, "cpucheck")
        compiler.link_executable(objects, program)
        probe = subprocess.run([program], check=False, timeout=30, capture_output=True, text=True)
        return probe.stdout.strip() if probe.returncode == 0 else ""
    except Exception:  # noqa: BLE001 - a failed probe only means "portable flags"
        return ""
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def native_compile_flags(compiler) -> list[str]:
    if getattr(compiler, "compiler_type", "") == "msvc":
        return ["/O2"]
    flags = list(PORTABLE_FLAGS)
    if os.environ.get("EDGERUN_MARCH_NATIVE") == "1":
        flags.append("-march=native")
    elif _is_x86_64():
        simd = _build_machine_simd(compiler)
        if simd:
            flags += ["-mavx2", "-mfma"]
        if simd == "avx512f" and os.environ.get("EDGERUN_NO_AVX512") != "1":
            # explicit 16-float vectors in the GEMM; loops the compiler vectorises itself
            # (depthwise rows of 7..56 floats) stay at 8 floats, which suits them better
            flags += ["-mavx512f", "-mprefer-vector-width=256"]
    return flags + os.environ.get("EDGERUN_EXTRA_CFLAGS", "").split()


class OptionalBuildExt(build_ext):
    """build_ext that turns a compile failure into a warning instead of a failed install."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - compiler missing, headers missing, ...
            _warn(f"the native extension could not be built ({exc})")

    def build_extension(self, ext):
        ext.extra_compile_args = native_compile_flags(self.compiler)
        ext.extra_link_args = ["-pthread"] + os.environ.get("EDGERUN_EXTRA_LDFLAGS", "").split()
        print(f"edgerun: compiling {ext.name} with {' '.join(ext.extra_compile_args)}")
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            _warn(f"compiling {ext.name} failed ({exc})")

    def copy_extensions_to_source(self):
        # editable installs copy the built library next to the sources; skip what did not build
        try:
            super().copy_extensions_to_source()
        except Exception as exc:  # noqa: BLE001
            _warn(f"the native extension was not built ({exc})")


def extensions():
    if os.environ.get("EDGERUN_NO_NATIVE") == "1":
        return []
    return [Extension("edgerun.kernels._native", sources=NATIVE_SOURCES, depends=[
        os.path.join(NATIVE_DIR, header) for header in ("kernels.h", "pybuffers.h", "threadpool.h")])]


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
