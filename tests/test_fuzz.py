"""The fuzz suite (tools/fuzz.py) in CI: seeded hostile models, bundles, .pth files and external-data folders,
run in capped worker subprocesses. Any crash, hang, exception that is not an EdgerunError, or resident memory
beyond edgerun's ceiling fails, with the seed and the case printed (and the command that reproduces it).

EDGERUN_FUZZ_SEED and EDGERUN_FUZZ_CASES change the campaign; `python tools/fuzz.py --cases N` runs longer ones."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import fuzz  # noqa: E402

SEED = int(os.environ.get("EDGERUN_FUZZ_SEED", "20261206"))
CASES = int(os.environ.get("EDGERUN_FUZZ_CASES", "4000"))


def test_the_harness_reports_crashes_hangs_python_errors_and_memory_beyond_the_ceiling():
    kinds = ("selftest-crash", "selftest-python-error", "selftest-alloc", "selftest-rss")
    summary = fuzz.run_cases(SEED, range(len(kinds)), kinds=None, timeout=120.0, case_kinds=kinds)
    summary.merge(fuzz.run_cases(SEED, [len(kinds)], kinds=None, timeout=1.0, case_kinds=["selftest-hang"]))
    found = {f.kind: f for f in summary.findings}
    assert summary.cases == 5 and len(summary.findings) == 5, summary.report()
    assert found["selftest-crash"].what == "crash" and "SIGSEGV" in found["selftest-crash"].detail
    assert found["selftest-hang"].what == "hang"
    assert found["selftest-python-error"].what == "error" and "KeyError" in found["selftest-python-error"].detail
    assert found["selftest-alloc"].what == "error" and "MemoryError" in found["selftest-alloc"].detail
    assert found["selftest-rss"].what == "error" and "resident memory grew" in found["selftest-rss"].detail


def test_seed_models_run_cleanly_so_mutations_start_from_valid_models():
    summary = fuzz.run_cases(SEED, range(len(fuzz.seed_models())), kinds=None, timeout=60.0,
                             case_kinds=["seed"] * len(fuzz.seed_models()))
    assert summary.ok == summary.cases == len(fuzz.seed_models()), summary.report()


def test_fuzz_campaign_finds_no_crash_hang_or_foreign_exception():
    summary = fuzz.run_parallel(SEED, CASES, workers=2, timeout=60.0)
    print(summary.report())
    assert summary.cases == CASES
    assert not summary.findings, summary.report()
    for kind in fuzz.KINDS:  # every kind both reached the kernels and was refused somewhere: not vacuous
        counts = summary.by_kind[kind]
        assert counts["ok"] > 0 and counts["refused"] > 0, (kind, counts)
