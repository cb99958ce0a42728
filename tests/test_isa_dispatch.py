"""Run-time choice of the native kernels' instruction-set variant (edgerun/kernels/isa.py).

One build holds every x86-64 variant (AVX-512, AVX2+FMA, SSE2); the best the CPU runs loads, and
EDGERUN_ISA forces one. Each variant this CPU runs is forced in a subprocess: it reports itself,
gives MobileNetV2's top-5 and logits within 1e-5 (relative to the largest logit) of the numpy
reference and of every other variant, and passes the kernels' differential tests (block, depthwise,
packed pointwise GEMM, GEMV against numpy).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgerun import kernels
from edgerun.errors import EdgerunError
from edgerun.kernels import isa

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not kernels.native_available(), reason="the C extension is not built")

VARIANT_RUN = r"""
import json
import numpy as np
from edgerun import InferenceSession, zoo
from edgerun.kernels import _native, native
model = zoo.mobilenet_v2(0.35, 96, batch=1)
x = np.random.default_rng(7).standard_normal((1, 3, 96, 96)).astype(np.float32)
sess = InferenceSession(model, kernels_backend="native", threads=1)
(logits,) = sess.run(None, {sess.get_inputs()[0].name: x})
print(json.dumps({"isa": native.isa(), "module": _native.__name__, "build_info": native.build_info(),
                  "logits": logits.ravel().tolist()}))
"""
# the kernels' differential tests (native against the numpy reference), run under each forced variant
DIFFERENTIAL_TESTS = ["tests/test_native_block.py", "tests/test_native_depthwise.py", "tests/test_native_backend.py",
                      "tests/test_step_kernels.py::test_packed_pointwise_gemm_matches_numpy",
                      "tests/test_step_kernels.py::test_native_gemm_matches_reference",
                      "tests/test_step_kernels.py::test_global_average_pool_matches_reference"]
EXPECTED_FLAGS = {"avx512": {"avx512f": 1, "avx2": 1, "fma": 1, "vector_floats": 16},
                  "avx2": {"avx512f": 0, "avx2": 1, "fma": 1, "vector_floats": 8},
                  "sse2": {"avx512f": 0, "avx2": 0, "fma": 0, "vector_floats": 4}}


def _env(variant):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", EDGERUN_KERNELS="native")
    env[isa.ENV_VAR] = variant
    return env


def _run_variant(variant: str) -> dict:
    result = subprocess.run([sys.executable, "-c", VARIANT_RUN], cwd=ROOT, env=_env(variant), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _reference_logits():
    from edgerun import InferenceSession, zoo
    model = zoo.mobilenet_v2(0.35, 96, batch=1)
    x = np.random.default_rng(7).standard_normal((1, 3, 96, 96)).astype(np.float32)
    sess = InferenceSession(model, kernels_backend="numpy", threads=1)
    (logits,) = sess.run(None, {sess.get_inputs()[0].name: x})
    return logits.ravel()


def _top5(logits):
    return list(np.argsort(-np.asarray(logits), kind="stable")[:5])


def test_every_variant_this_cpu_runs_gives_the_same_top5_and_logits():
    variants = isa.runnable_variants()
    assert variants, "no runnable variant, yet the extension imports"
    reference = _reference_logits()
    scale = float(np.abs(reference).max())
    runs = {}
    for variant in variants:
        run = _run_variant(variant)
        assert run["isa"] == variant and run["module"] == isa.module_name(variant)
        assert run["build_info"]["isa"] == variant
        for flag, value in EXPECTED_FLAGS.get(variant, {}).items():
            assert run["build_info"][flag] == value, (variant, run["build_info"])
        runs[variant] = np.asarray(run["logits"], dtype=np.float32)
        assert np.abs(runs[variant] - reference).max() <= 1e-5 * scale, variant
        assert _top5(runs[variant]) == _top5(reference), variant
    first = runs[variants[0]]
    for variant, logits in runs.items():
        assert np.abs(logits - first).max() <= 1e-5 * scale, (variants[0], variant)


@pytest.mark.parametrize("variant", ["avx2", "sse2"])
def test_kernel_differential_tests_pass_under_a_forced_variant(variant):
    if variant not in isa.runnable_variants():
        pytest.skip(f"this CPU or build does not run the {variant} variant")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                             *DIFFERENTIAL_TESTS], cwd=ROOT, env=_env(variant), capture_output=True, text=True,
                            timeout=900)
    tail = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, tail
    assert " passed" in tail and "skipped" not in tail, tail


def test_the_default_is_the_best_variant_the_cpu_runs(monkeypatch):
    monkeypatch.delenv(isa.ENV_VAR, raising=False)
    from edgerun.kernels import native
    assert native.isa() == isa.runnable_variants()[0] == isa.choose_variant()
    assert native.vector_floats() == native.build_info()["vector_floats"]


def test_the_cpu_probe_answers_for_this_machine():
    from edgerun.kernels import _cpu
    supported = _cpu.supported_isas()
    if os.uname().machine in ("x86_64", "amd64"):
        flags = set(Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split())
        expected = ["sse2"]
        if {"avx2", "fma"} <= flags:
            expected.insert(0, "avx2")
            if "avx512f" in flags:
                expected.insert(0, "avx512")
        assert list(supported) == expected
    else:
        assert supported == ("generic",)


def test_an_unknown_variant_is_refused(monkeypatch):
    monkeypatch.setenv(isa.ENV_VAR, "avx1024")
    with pytest.raises(EdgerunError, match="EDGERUN_ISA='avx1024'"):
        isa.choose_variant()


def test_a_variant_the_cpu_lacks_is_an_error_not_a_fallback(monkeypatch):
    built = isa.built_variants()
    monkeypatch.setattr(isa, "cpu_variants", lambda: ("sse2", "native", "generic"))
    monkeypatch.setenv(isa.ENV_VAR, built[0] if built[0] != "sse2" else "avx512")
    with pytest.raises(EdgerunError, match="EDGERUN_ISA=.*(does not support|has no)"):
        isa.choose_variant()
    monkeypatch.delenv(isa.ENV_VAR)
    assert isa.choose_variant() == ("sse2" if "sse2" in built else built[-1])


def test_forcing_an_unsupported_variant_fails_the_import_loudly():
    missing = next((v for v in ("avx512", "avx2", "sse2", "generic") if v not in isa.runnable_variants()), None)
    if missing is None:
        pytest.skip("every variant runs here")
    result = subprocess.run([sys.executable, "-c", "from edgerun import kernels; print(kernels.backend())"],
                            cwd=ROOT, env=dict(_env(missing), EDGERUN_KERNELS=""), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert f"EDGERUN_ISA={missing}" in result.stderr, result.stderr[-2000:]
