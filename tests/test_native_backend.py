"""edgerun.kernels.backend(): EDGERUN_KERNELS, the fallback warning, dispatch of run_block."""
import warnings

import numpy as np
import pytest

import edgerun.kernels as kernels
from edgerun.errors import EdgerunError
from test_kernels_block import assert_close, make_scratch, mobilenet_block_case, reference_block, run_case


@pytest.fixture
def native_missing(monkeypatch):
    """Pretend the extension failed to import."""
    monkeypatch.setattr(kernels, "_native_state", {"error": "simulated: no compiler"})


def test_forced_numpy(monkeypatch):
    monkeypatch.setenv("EDGERUN_KERNELS", "numpy")
    assert kernels.backend() == "numpy"


def test_forced_native_when_built(monkeypatch):
    monkeypatch.setenv("EDGERUN_KERNELS", "native")
    if not kernels.native_available():
        with pytest.raises(EdgerunError, match="cannot be imported"):
            kernels.backend()
    else:
        assert kernels.backend() == "native"


def test_unknown_backend_name_is_an_error(monkeypatch):
    monkeypatch.setenv("EDGERUN_KERNELS", "cuda")
    with pytest.raises(EdgerunError, match="EDGERUN_KERNELS"):
        kernels.backend()


def test_forcing_native_without_extension_says_why(monkeypatch, native_missing):
    monkeypatch.setenv("EDGERUN_KERNELS", "native")
    with pytest.raises(EdgerunError, match="simulated: no compiler"):
        kernels.backend()


def test_fallback_to_numpy_warns_once(monkeypatch, native_missing):
    monkeypatch.delenv("EDGERUN_KERNELS", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert kernels.backend() == "numpy"
        assert kernels.backend() == "numpy"
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "numpy kernels run" in messages[0]


def test_default_is_native_when_built(monkeypatch):
    monkeypatch.delenv("EDGERUN_KERNELS", raising=False)
    assert kernels.backend() == ("native" if kernels.native_available() else "numpy")


def test_run_block_dispatches_to_the_chosen_backend(monkeypatch, native_missing):
    monkeypatch.setenv("EDGERUN_KERNELS", "numpy")
    case = mobilenet_block_case(t=2, band_rows=14)
    out = np.full((24, 56, 56), np.nan, np.float32)
    kernels.run_block(case.x, out, case.weights, case.geom, case.sched, make_scratch(case.geom, case.sched, "numpy"))
    assert_close(out, reference_block(case))
    with pytest.raises(EdgerunError, match="unknown kernel backend"):
        kernels.run_block(case.x, out, case.weights, case.geom, case.sched, {}, backend="gpu")


def test_both_backends_agree_on_a_mobilenet_block():
    case = mobilenet_block_case(t=4, band_rows=5)
    assert_close(run_case(case, "native"), run_case(case, "numpy"))
