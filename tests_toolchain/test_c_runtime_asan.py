"""The C runtime under AddressSanitizer and UndefinedBehaviorSanitizer (slow: a separate build and a larger
sweep of bad bundles than tests/test_c_runtime.py).

Built with the system compiler through the Makefile with -fsanitize=address,undefined and
-fno-sanitize-recover=all, so any out-of-bounds access, use after free, leak or undefined behaviour ends the
driver with an error. Every corrupted bundle must end in a status (an error one wherever a checksum covers
the byte), the good ones must still compute the Python session's logits (within 1e-5 of the largest: the
instrumentation moves the compiler's multiply-add contractions), and every API error
path must return its code. A compiler without the sanitizers is a failure, not a skip.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_c_runtime as harness  # noqa: E402

SANITIZE = "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -DER_NO_ALLOC_COUNT"


@pytest.fixture(scope="module")
def asan_build(tmp_path_factory):
    if harness.compiler() is None:
        pytest.fail("no C compiler: the sanitizer build needs one")
    os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    os.environ.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    return harness.build(tmp_path_factory.mktemp("c-runtime-asan"), extra_cflags=SANITIZE)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return harness.bundle_maker(tmp_path_factory.mktemp("c-bundles-asan"))


@pytest.mark.parametrize("model,budget", harness.MODELS[1:])
@pytest.mark.parametrize("threads", [1, 2])
def test_good_bundles_run_clean_and_match_python(asan_build, bundles, model, budget, threads, tmp_path):
    bundle = bundles(model, threads, budget)
    shape = harness.edgerun.load(bundle, threads=threads).get_inputs()[0].shape
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    expected, peak = harness.python_logits(bundle, threads, x)
    got, info = harness.c_logits(asan_build, bundle, threads, x, tmp_path)
    assert int(info["arena_bytes"]) == peak
    # the instrumented build may contract multiply-adds elsewhere than the extension (MobileNetV3's squeeze-
    # excitation and HardSwish steps came out a few ulp apart): bit identity is tests/test_c_runtime.py's
    expected = expected.reshape(-1)
    assert np.abs(got - expected).max() <= 1e-5 * float(np.abs(expected).max())


def test_api_error_paths_run_clean(asan_build, bundles):
    result = harness.ertest(asan_build, "api", bundles("mobilenet_v2:width=0.35,resolution=96", 1, 300_000))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ERROR" not in result.stderr and "runtime error" not in result.stderr


@pytest.mark.parametrize("model,budget,seed", [("mobilenet_v2:width=0.35,resolution=96", 300_000, 11),
                                               ("shufflenet_v1:width=0.5,resolution=96", None, 12),
                                               ("mobilenet_v3_small_like:resolution=96", 120_000, 13)])
def test_bad_bundles_never_crash_under_the_sanitizers(asan_build, bundles, model, budget, seed, tmp_path):
    seen = harness.check_bad_bundles(asan_build, bundles(model, 1, budget), tmp_path, count=160, seed=seed)
    assert seen.get("EDGERUN_E_CORRUPT", 0) > 100
