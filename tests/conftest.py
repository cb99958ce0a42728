import os

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import settings

# The suite is the gate for every change, so every run draws the same examples (derived from each
# test's source): a pass on this machine is a pass in CI. EDGERUN_HYPOTHESIS=explore draws new
# examples each run, for hunting bugs.
settings.register_profile("gate", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("EDGERUN_HYPOTHESIS", "gate"))


def run_ort(model, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_close_to_ort(actual, expected, rel=1e-4):
    """The project's parity rule: max|edgerun - ort| <= rel * max(1, max|ort|)."""
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.max(np.abs(expected))))
    err = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    assert err <= rel * scale, f"max abs error {err:.3g} exceeds {rel} * {scale:.3g}"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def split_every_step():
    """Native kernels share out work of any size: even the smallest step is split between the threads."""
    from edgerun.kernels import _native
    previous = _native.block_min_part_macs(0)
    yield
    _native.block_min_part_macs(previous)


@pytest.fixture(autouse=True)
def no_calibrated_cost_model(tmp_path_factory, monkeypatch):
    """Plans in tests come from the built-in cost model, not from a calibration left on this machine."""
    monkeypatch.setenv("EDGERUN_COST_MODEL_DIR", str(tmp_path_factory.mktemp("cost-models")))
