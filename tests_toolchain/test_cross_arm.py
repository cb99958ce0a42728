"""The native kernels cross-compiled for aarch64 (NEON) and armv7-a (NEON, hard float), run under qemu-user.

tests_toolchain/kernel_check.c checks gemm, depthwise, the fused block and steps.c's kernels against scalar
references in C and prints the logits of a fixed-seed MobileNetV2-like block chain. It is built for the host
and both ARM targets (cbuild.TARGETS; .ci/run installs the cross compilers and qemu-user-static): every
check passes on each, the ARM objects hold NEON vector arithmetic (not only scalar code), and the chain's
logits equal the host's within 1e-5 relative. Missing tools are a failure, not a skip.

The C bundle runtime's cross test (tests_toolchain/test_c_runtime_cross.py) builds the runtime with
`make <cbuild.make_variables(target)>` for "aarch64" and "armv7", runs its test program and the example
app under target.runner, and compares the MobileNetV2 bundle's logits and top-5 with x86's.
"""
import re

import pytest

import cbuild

CHECK_FAMILIES = ("gemm", "depthwise", "block", "steps")
# NEON float multiply-adds on q / .4s registers, as the disassemblers print them
NEON_VECTOR_FMA = {"aarch64": re.compile(r"\bfml[as]\s+v\d+\.4s"),
                   "armv7": re.compile(r"\bv(ml[as]|fm[as])\.f32\s+q\d+")}
_runs: dict = {}


def kernel_check(name: str, tmp_path_factory):
    """(target, workdir, parsed output) of kernel_check built and run for a target (once per session)."""
    if name not in _runs:
        target = cbuild.TARGETS[name]
        missing = cbuild.missing_tools(target)
        assert not missing, f"{', '.join(missing)} not installed (.ci/run installs them with apt-get)"
        workdir = tmp_path_factory.mktemp(f"kernel_check_{name}")
        program = cbuild.build_program(target, cbuild.ROOT / "tests_toolchain" / "kernel_check.c", workdir)
        result = cbuild.run_program(target, program)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        _runs[name] = (target, workdir, result.stdout, cbuild.parse_kernel_check(result.stdout))
    return _runs[name]


@pytest.mark.parametrize("name", ["host", "aarch64", "armv7"])
def test_kernel_checks_pass(name, tmp_path_factory):
    target, _, output, (passed, vector_floats, logits) = kernel_check(name, tmp_path_factory)
    assert "kernel checks passed" in output, output[-3000:]
    assert set(passed) == set(CHECK_FAMILIES) and all(cases > 10 for cases in passed.values()), passed
    if target.vector_floats is not None:
        assert vector_floats == target.vector_floats
    assert len(logits) == 16 and all(abs(v) < 1e3 for v in logits)


@pytest.mark.parametrize("name", ["aarch64", "armv7"])
def test_arm_kernels_use_neon_vector_arithmetic(name, tmp_path_factory):
    target, workdir, _, _ = kernel_check(name, tmp_path_factory)
    for obj in ("gemm.o", "depthwise.o", "kernel_check.o"):  # kernel_check.o holds steps.c
        code = cbuild.disassembly(target, workdir / obj)
        assert len(NEON_VECTOR_FMA[name].findall(code)) >= 20, f"{obj}: no NEON vector multiply-adds"


@pytest.mark.parametrize("name", ["aarch64", "armv7"])
def test_arm_chain_logits_match_the_host(name, tmp_path_factory):
    host_logits = kernel_check("host", tmp_path_factory)[3][2]
    logits = kernel_check(name, tmp_path_factory)[3][2]
    scale = max(abs(v) for v in host_logits)
    assert scale > 0.01
    assert max(abs(a - b) for a, b in zip(logits, host_logits)) <= 1e-5 * scale, (logits, host_logits)
