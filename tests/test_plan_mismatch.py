"""A plan (or bundle) made for some threads and kernels and run with others is refused
(PlanMismatchError, saying what differs and what to pass) or, with replan=True, planned again for
the same budget and said so: never changed in silence."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from edgerun import InferenceSession, kernels
from edgerun.bundle import compile_bundle, load
from edgerun.errors import InvalidOptionError, PlanMismatchError
from edgerun.executor import CompiledModel
from scheduler import Plan

SHAPE = (1, 3, 96, 96)
BUDGET = 300_000
BACKEND = "native" if kernels.native_available() else "numpy"
needs_native = pytest.mark.skipif(not kernels.native_available(), reason="the native extension is not built")


def mobilenet():
    from edgerun.zoo.mobilenet_v2 import mobilenet_v2
    return mobilenet_v2(width=0.35, resolution=96)


@pytest.fixture(scope="module")
def model():
    return mobilenet()


@pytest.fixture(scope="module")
def bundles(model, tmp_path_factory):
    """The same model compiled for 2 and for 4 threads, within one budget."""
    folder = tmp_path_factory.mktemp("plan-mismatch")
    compiled = {}
    for threads in (2, 4):
        path = folder / f"mobilenet-{threads}.erb"
        info = compile_bundle(model.SerializeToString(), path, memory_budget=BUDGET, input_shapes={"input": SHAPE},
                              threads=threads, kernels_backend=BACKEND)
        compiled[threads] = (path, info)
    return compiled


def image(seed=3):
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def test_the_plan_records_what_it_was_made_for(bundles):
    for threads, (_, info) in bundles.items():
        plan = info.plan
        assert (plan.backend, plan.threads, plan.activation_dtype, plan.budget) == (BACKEND, threads, "float32", BUDGET)
        assert plan.records_sizes and plan.peak_bytes <= BUDGET
        assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


@pytest.mark.parametrize("planned, running", [(2, 4), (4, 2)])
def test_a_bundle_run_with_other_threads_is_refused_by_default(bundles, planned, running):
    path, _ = bundles[planned]
    with pytest.raises(PlanMismatchError) as error:
        load(path, threads=running)
    message = str(error.value)
    assert f"threads {planned} in the plan, {running} here" in message
    assert f"threads={planned}" in message and "replan=True" in message
    assert isinstance(error.value, InvalidOptionError)


@pytest.mark.parametrize("planned, running", [(2, 4), (4, 2)])
def test_a_bundle_run_with_other_threads_replans_when_asked_and_says_so(model, bundles, planned, running):
    path, info = bundles[planned]
    with pytest.warns(RuntimeWarning, match=f"made for the {BACKEND} kernels on {planned} thread.*re-planned"):
        session = load(path, threads=running, replan=True)
    assert session.replanned
    notices = session.compiled.notices
    assert len(notices) == 1 and f"threads {planned} in the plan, {running} here" in notices[0]
    assert f"{BUDGET:,} bytes" in notices[0]
    fresh = InferenceSession(model, memory_budget=BUDGET, threads=running, kernels_backend=BACKEND)
    assert session.plan == fresh.plan  # planned again exactly as a session for these threads plans
    assert session.plan.threads == running and session.arena_bytes <= BUDGET
    x = image()
    np.testing.assert_array_equal(session.run(None, {"input": x})[0], fresh.run(None, {"input": x})[0])


@pytest.mark.parametrize("threads", [2, 4])
def test_a_bundle_run_as_planned_keeps_its_plan(bundles, threads):
    path, info = bundles[threads]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session = load(path, threads=threads, replan=True)  # nothing to re-plan
    assert session.plan == info.plan and session.compiled.notices == [] and not session.replanned


def test_a_bundle_from_before_plans_recorded_threads_takes_the_callers(bundles, tmp_path, model):
    """Older bundles' plans lack backend, threads and sizes: the header's backend and the caller's
    threads are taken, and the plan's placement is still verified."""
    from test_bundle import rewrite_header

    source, info = bundles[2]
    old = tmp_path / "old.erb"
    old.write_bytes(source.read_bytes())

    def strip(header):
        for key in ("backend", "threads", "activation_dtype", "budget", "buffer_sizes"):
            header["plan"].pop(key)
        for step in header["plan"]["steps"]:
            step.pop("scratch_sizes")

    rewrite_header(old, strip)
    session = load(old, threads=2)
    assert session.plan.threads == 2 and session.plan.backend == BACKEND and not session.plan.records_sizes
    assert session.plan.offsets == info.plan.offsets and session.compiled.notices == []
    x = image(4)
    np.testing.assert_array_equal(session.run(None, {"input": x})[0], load(source, threads=2).run(None, {"input": x})[0])
    with pytest.raises(KeyError, match="threads"):
        Plan.from_dict({k: v for k, v in info.plan.to_dict().items() if k != "threads"})


@needs_native
def test_a_plan_for_the_native_kernels_run_with_numpy_is_refused_or_replanned(model):
    native_session = InferenceSession(model, memory_budget=BUDGET, threads=1, kernels_backend="native")
    graph, plan = native_session.compiled.graph, native_session.plan
    assert plan.backend == "native"
    with pytest.raises(PlanMismatchError, match=r"backend 'native' in the plan, 'numpy' here.*kernels_backend='native'"):
        CompiledModel(graph, budget=None, backend="numpy", threads=1, plan=plan)
    with pytest.warns(RuntimeWarning, match="made for the native kernels on 1 thread.*re-planned"):
        compiled = CompiledModel(graph, budget=None, backend="numpy", threads=1, plan=plan, replan=True)
    assert compiled.plan.backend == "numpy" and compiled.plan.budget == BUDGET
    fresh = InferenceSession(model, memory_budget=BUDGET, threads=1, kernels_backend="numpy")
    assert compiled.plan == fresh.plan
    x = image(5)
    np.testing.assert_array_equal(compiled.run({"input": x}, ["logits"])[0][0], fresh.run(None, {"input": x})[0])


@needs_native
def test_a_native_bundle_loaded_for_numpy_is_replanned_with_a_warning_not_in_silence(bundles):
    path, info = bundles[2]
    with pytest.warns(RuntimeWarning, match="planned for the native kernels but the numpy kernels"):
        session = load(path, threads=2, kernels_backend="numpy")
    assert session.replanned and session.plan.backend == "numpy" and session.arena_bytes <= BUDGET


def test_a_plan_with_other_buffer_sizes_is_refused(model):
    session = InferenceSession(model, memory_budget=BUDGET, threads=1, kernels_backend=BACKEND)
    plan = session.plan
    name = next(iter(plan.buffer_sizes))
    wrong = Plan(**{**plan.__dict__, "buffer_sizes": dict(plan.buffer_sizes, **{name: plan.buffer_sizes[name] + 4})})
    with pytest.raises(PlanMismatchError, match=f"buffer '{name}'"):
        CompiledModel(session.compiled.graph, budget=None, backend=BACKEND, threads=1, plan=wrong)


@pytest.mark.parametrize("threads", [2, 4])
def test_a_bundle_loaded_without_threads_runs_with_its_plans(bundles, threads):
    path, info = bundles[threads]
    session = load(path)
    assert session.threads == threads and session.plan == info.plan and not session.replanned
