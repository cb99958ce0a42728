"""A caller can force a block's split, beyond the paper's t <= 5, and the run still computes the same."""
import numpy as np
import pytest

from edgerun import InferenceSession, zoo
from edgerun.errors import InvalidOptionError


@pytest.fixture(scope="module")
def model():
    return zoo.mobilenet_v2(width=0.35, resolution=96, batch=1)


@pytest.fixture(scope="module")
def blocks(model):
    plan = InferenceSession(model, kernels_backend="numpy").plan
    return [step.name for step in plan.steps if step.kind == "InvertedResidual"]


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_forced_splits_are_planned_and_compute_the_same(model, blocks, backend):
    x = np.random.default_rng(4).standard_normal((1, 3, 96, 96)).astype(np.float32)
    plain = InferenceSession(model, kernels_backend=backend)
    # block 4 (features.5): 16 -> 96 hidden channels at 12x12; t = 12 keeps 8 of them per chunk, and with no
    # band height given the block runs whole (12 rows); block 5 in 3-row bands
    forced = InferenceSession(model, kernels_backend=backend, schedule={blocks[4]: 12, blocks[5]: (2, 3)})
    assert (forced.plan.step(blocks[4]).t, forced.plan.step(blocks[4]).band_rows) == (12, 12)
    assert (forced.plan.step(blocks[5]).t, forced.plan.step(blocks[5]).band_rows) == (2, 3)
    expected, actual = plain.run(None, {"input": x})[0], forced.run(None, {"input": x})[0]
    assert np.max(np.abs(actual - expected)) <= 1e-5 * max(1.0, float(np.max(np.abs(expected))))


def test_overrides_name_real_blocks_and_sane_values(model, blocks):
    with pytest.raises(InvalidOptionError, match="not inverted-residual blocks"):
        InferenceSession(model, schedule={"no_such_block": 2})
    with pytest.raises(InvalidOptionError, match="exceeds"):
        InferenceSession(model, schedule={blocks[4]: 1000})
    with pytest.raises(InvalidOptionError, match="band_rows"):
        InferenceSession(model, schedule={blocks[4]: (2, 0)})
