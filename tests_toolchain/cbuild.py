"""Compiling the native kernels into C programs for the host and for ARM (run under qemu-user).

Each target names a compiler, its flags (the ISA section of edgerun/kernels/native/kernels.h says why
armv7 needs -funsafe-math-optimizations) and how to run what it builds. The programs link statically,
so qemu needs no ARM sysroot. A C program built from the kernel sources (tests_toolchain/kernel_check.c,
the C bundle runtime's tests) goes through build_program(); make_variables() gives the same compiler and
flags to a Makefile whose CC and CFLAGS are overridable (the C runtime's).
"""
from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "edgerun" / "kernels" / "native"
# the flags setup.py compiles the extension with (PORTABLE_FLAGS), minus nothing
COMMON_FLAGS = ["-O3", "-std=c99", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math", "-pthread",
                "-Wall", "-Werror=implicit-function-declaration"]
# kernel sources a C program links (steps.c is #included by kernel_check.c for its static GEMM and GEMV)
KERNEL_SOURCES = ["gemm.c", "depthwise.c", "block.c", "activation.c", "threadpool.c"]


@dataclass(frozen=True)
class Target:
    name: str
    compiler: tuple[str, ...]
    flags: tuple[str, ...]
    runner: tuple[str, ...]          # () runs the program directly
    objdump: str | None = None       # disassembler for checking the vector code
    vector_floats: int | None = None  # ER_VL the kernels must be built with (None: any)


TARGETS = {
    "host": Target("host", ("gcc",), (), ()),
    "host-clang": Target("host-clang", ("clang",), (), ()),
    "aarch64": Target("aarch64", ("aarch64-linux-gnu-gcc",), ("-static",), ("qemu-aarch64-static",),
                      "aarch64-linux-gnu-objdump", 4),
    "armv7": Target("armv7", ("arm-linux-gnueabihf-gcc",),
                    ("-march=armv7-a", "-mfpu=neon", "-mfloat-abi=hard", "-funsafe-math-optimizations", "-static"),
                    ("qemu-arm-static",), "arm-linux-gnueabihf-objdump", 4),
}


def missing_tools(target: Target) -> list[str]:
    tools = [target.compiler[0], *target.runner[:1]] + ([target.objdump] if target.objdump else [])
    return [tool for tool in tools if shutil.which(tool) is None]


def make_variables(target: Target) -> list[str]:
    """CC=... CFLAGS=... PROGRAM_LDFLAGS=... for `make` (the C bundle runtime's Makefile): -static links the
    example and the test program (not the shared library)."""
    flags = [flag for flag in target.flags if flag != "-static"]
    static = "-static" if "-static" in target.flags else ""
    return [f"CC={' '.join(target.compiler)}", f"CFLAGS={' '.join(COMMON_FLAGS + flags)}",
            f"PROGRAM_LDFLAGS={static}"]


def _compile(target: Target, source: Path, obj: Path, defines: tuple[str, ...]) -> None:
    command = [*target.compiler, *COMMON_FLAGS, *target.flags, *defines, "-I", str(NATIVE), "-c", str(source),
               "-o", str(obj)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr[-4000:]}"


def build_program(target: Target, main_source: Path, workdir: Path, defines: tuple[str, ...] = (),
                  kernel_sources=KERNEL_SOURCES) -> Path:
    """main_source + the kernel sources compiled for target (two compilers at a time) and linked."""
    workdir.mkdir(parents=True, exist_ok=True)
    sources = [main_source] + [NATIVE / name for name in kernel_sources]
    objects = [workdir / f"{source.stem}.o" for source in sources]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda pair: _compile(target, pair[0], pair[1], defines), zip(sources, objects)))
    program = workdir / main_source.stem
    command = [*target.compiler, *target.flags, "-pthread", *map(str, objects), "-lm", "-o", str(program)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr[-4000:]}"
    return program


def run_program(target: Target, program: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*target.runner, str(program), *args], capture_output=True, text=True, timeout=timeout)


def disassembly(target: Target, obj: Path) -> str:
    result = subprocess.run([target.objdump, "-d", str(obj)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def parse_kernel_check(output: str) -> tuple[dict[str, int], int, list[float]]:
    """({family: cases} of the checks that passed, vector_floats, the chain's logits)."""
    passed, logits, vector_floats = {}, [], 0
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "check" and parts[3] == "ok":
            passed[parts[1]] = int(parts[2])
        elif len(parts) == 3 and parts[0] == "logit":
            logits.append(float(parts[2]))
        elif len(parts) == 2 and parts[0] == "vector_floats":
            vector_floats = int(parts[1])
    return passed, vector_floats, logits
