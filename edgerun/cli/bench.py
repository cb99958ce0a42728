"""`edgerun bench`: time edgerun against onnxruntime in one process, on the same input.

For each model: onnxruntime (CPUExecutionProvider, intra_op_num_threads = --threads, thread spinning off:
`session.intra_op.allow_spinning = 0`, so that its idle threads do not take the core edgerun's second thread
needs in an interleaved bench), then edgerun
with each kernel backend (numpy; native when the C extension loads), each with two plans: the
fastest (no budget) and the memory-minimal one (budget = the smallest reachable peak, taken from
the MemoryBudgetError a 1-byte budget raises). Every configuration is warmed up, then the runs are
taken in turns (each configuration pauses 0.1 s, runs one untimed run, then 5 timed runs, then the next
one), so that a change in machine load touches all of them alike and no configuration is timed while
another's threads still spin; the figure is the median of the runs. Speed is stated as
ratios: to onnxruntime measured in the same run, and to edgerun's own fastest plan on the same
backend. Beside each plan: its planned peak and the cost model's estimated time. The text output ends
with one line per model (fastest plan / onnxruntime, memory-minimal / fastest) and their geometric means.

Models: zoo names, .onnx paths, and `light:NAME` (the onnx wheel's light CNNs with seeded random weights,
edgerun/cli/bench_models.py); `--models a,b` (or `all`, `zoo`, `light`) adds to the positional names.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from edgerun import kernels
from edgerun.errors import MemoryBudgetError
from edgerun.cli.bench_models import DEFAULT_MODELS, resolve_bench_model, split_model_list
from edgerun.models import UsageError, batch_one_shapes
from edgerun.progress import progress
from edgerun.session import InferenceSession
from edgerun.units import parse_bytes
from scheduler.cost import load_calibrated

DEFAULT_RUNS = 30
DEFAULT_WARMUP = 3
INPUT_SEED = 0
BLAS_ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                 "MKL_NUM_THREADS")


@dataclass
class Config:
    """One thing that is timed: a callable that runs the model once on the bench input."""

    name: str               # "onnxruntime", "edgerun numpy fastest", ...
    backend: str            # "onnxruntime", "numpy" or "native"
    plan: str               # "-", "fastest", "memory-minimal" or "budget N B"
    run: object = field(repr=False)
    planned_peak_bytes: int | None = None
    estimated_seconds: float | None = None
    budget_bytes: int | None = None
    max_abs_diff: float | None = None   # against onnxruntime's output
    calibrated_seconds: float | None = None  # the plan under this machine's calibrated cost model
    measured_peak_bytes: int | None = None   # arena + tracemalloc peak of one profiled run (untimed)
    seconds: list = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)


# ---------------------------------------------------------------- the machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def numpy_blas() -> str:
    """Which BLAS numpy was built with (numpy.show_config), and the BLAS variables of the environment."""
    name = "unknown"
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        name = " ".join(str(blas.get(k, "")) for k in ("name", "version")).strip()
        if blas.get("openblas configuration"):
            name += f" ({blas['openblas configuration']})"
    except Exception:  # older numpy: show_config prints and returns None
        pass
    env = ", ".join(f"{var}={os.environ[var]}" for var in BLAS_ENV_VARS if var in os.environ)
    return f"{name}; environment: {env or 'no BLAS variables set'}"


def machine_description(threads: int) -> dict:
    return {
        "cpu": cpu_model(),
        "cores_usable": usable_cores(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": numpy_blas(),
        "native_isa": native_isa(),
    }


def native_isa() -> str | None:
    """The instruction-set variant of the native kernels that runs here (None without them)."""
    return kernels.native.isa() if kernels.native_available() else None


# ---------------------------------------------------------------- building the configurations
def model_bytes(model) -> bytes:
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            return f.read()
    return model.SerializeToString()


def bench_input(sess) -> dict[str, np.ndarray]:
    """One seeded standard-normal array per input, batch 1 (the same feed for every configuration)."""
    rng = np.random.default_rng(INPUT_SEED)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in batch_one_shapes(sess).items()}


def onnxruntime_config(data: bytes, threads: int) -> tuple[Config, object]:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    return Config("onnxruntime", "onnxruntime", "-", run=None), session


def minimum_budget(model, backend: str, threads: int) -> int:
    """The smallest planned peak edgerun can reach, from the error a 1-byte budget raises."""
    try:
        sess = InferenceSession(model, memory_budget=1, threads=threads, kernels_backend=backend)
        sess.prepare(batch_one_shapes(sess))
    except MemoryBudgetError as exc:
        return exc.minimum_bytes
    raise RuntimeError("a 1-byte memory budget was accepted: cannot find the minimum peak")


def edgerun_config(model, backend: str, plan: str, threads: int, budget: int | None) -> tuple[Config, object]:
    sess = InferenceSession(model, memory_budget=budget, threads=threads, kernels_backend=backend)
    compiled_plan = sess.prepare(batch_one_shapes(sess))
    config = Config(f"edgerun {backend} {plan}", backend, plan, run=None,
                    planned_peak_bytes=compiled_plan.peak_bytes,
                    estimated_seconds=compiled_plan.estimated_seconds, budget_bytes=budget)
    return config, sess


def available_backends() -> list[str]:
    return ["numpy", "native"] if kernels.native_available() else ["numpy"]


def configurations(model, threads: int, backends: list[str], budgets=()) -> tuple[list[Config], dict]:
    """onnxruntime first, then edgerun per backend: fastest, memory-minimal and a plan per budget in
    `budgets` (bytes) that lies between them. Each Config gets a `run` closure over its own session and the
    shared feed; max_abs_diff is checked once here."""
    ort_config, ort_session = onnxruntime_config(model_bytes(model), threads)
    configs = []
    feeds = None
    calibrated = {}
    for backend in backends:
        fastest, fast_sess = edgerun_config(model, backend, "fastest", threads, None)
        smallest = minimum_budget(model, backend, threads)
        pairs = [(fastest, fast_sess)]
        if smallest < fastest.planned_peak_bytes:
            pairs.append(edgerun_config(model, backend, "memory-minimal", threads, smallest))
        else:   # nothing to split: the fastest plan is already the smallest one
            fastest.plan = "fastest = memory-minimal"
        for budget in budgets:
            if smallest <= budget < fastest.planned_peak_bytes:
                pairs.append(edgerun_config(model, backend, f"budget {budget:,} B", threads, budget))
        if feeds is None:
            feeds = bench_input(fast_sess)
        for config, sess in pairs:
            sess.run(None, feeds, profile=True)
            config.measured_peak_bytes = sess.last_run.measured_peak_bytes
            config.run = _edgerun_runner(sess, feeds)
            config.calibrated_seconds = calibrated_estimate(sess, backend, calibrated)
            configs.append(config)
    ort_config.run = _onnxruntime_runner(ort_session, feeds)
    reference = ort_config.run()[0]
    for config in configs:
        config.max_abs_diff = float(np.max(np.abs(config.run()[0] - reference)))
    return [ort_config] + configs, feeds


def calibrated_estimate(sess, backend: str, cache: dict) -> float | None:
    """The plan's seconds under the cost model `edgerun calibrate` saved for this backend (None
    when there is none): blocks by their geometry and chosen schedule, other steps by MACs."""
    if backend not in cache:
        cache[backend] = load_calibrated(backend)
    model = cache[backend]
    if model is None:
        return None
    plan = sess.plan
    total = 0.0
    for step in sess.compiled.planned_problem.steps:      # a segment is one step there
        chosen = plan.step(step.name)
        total += (model.block_seconds(step.block, chosen.schedule) if step.is_block
                  else model.step_seconds(step.macs, step.kind))
    return total


def _edgerun_runner(sess, feeds):
    return lambda: sess.run(None, feeds)


def _onnxruntime_runner(session, feeds):
    return lambda: session.run(None, feeds)


# ---------------------------------------------------------------- timing
SWITCH_PAUSE_SECONDS = 0.1


def time_interleaved(configs: list[Config], runs: int, warmup: int, label: str = "", block: int = 5) -> None:
    """Warm each configuration up, then take turns: each configuration waits SWITCH_PAUSE_SECONDS, runs one
    untimed run and then `block` timed runs, round after round, until each has `runs` timings. Taking turns
    spreads a change in the machine's load over all configurations; the pause lets the previous
    configuration's idle threads stop spinning (onnxruntime's pool spins for tens of milliseconds after a
    run and would take a core from a multi-threaded edgerun timed right after it)."""
    for config in configs:
        for _ in range(warmup):
            config.run()
    rounds = -(-runs // block)
    for round_index in progress(range(rounds), total=rounds, label=label):
        for config in configs:
            time.sleep(SWITCH_PAUSE_SECONDS)
            config.run()
            for _ in range(min(block, runs - round_index * block)):
                start = time.perf_counter()
                config.run()
                config.seconds.append(time.perf_counter() - start)


def summary(model_label: str, configs: list[Config]) -> dict:
    ort_median = configs[0].median_seconds
    fastest_median = {c.backend: c.median_seconds for c in configs if c.plan.startswith("fastest")}
    rows = []
    for config in configs:
        median = config.median_seconds
        rows.append({
            "config": config.name if config.backend == "onnxruntime" else f"edgerun {config.backend} {config.plan}",
            "backend": config.backend,
            "plan": config.plan,
            "median_ms": median * 1e3,
            "runs": len(config.seconds),
            "vs_onnxruntime": median / ort_median,
            "vs_own_fastest": median / fastest_median[config.backend] if config.backend in fastest_median else None,
            "planned_peak_bytes": config.planned_peak_bytes,
            "measured_peak_bytes": config.measured_peak_bytes,
            "budget_bytes": config.budget_bytes,
            "estimated_ms": None if config.estimated_seconds is None else config.estimated_seconds * 1e3,
            "calibrated_estimate_ms": None if config.calibrated_seconds is None else config.calibrated_seconds * 1e3,
            "max_abs_diff_vs_onnxruntime": config.max_abs_diff,
        })
    return {"model": model_label, "results": rows}


# ---------------------------------------------------------------- printing
def format_machine(machine: dict) -> list[str]:
    return [f"machine: {machine['cpu']}, {machine['cores_usable']} usable core(s) of {machine['cpu_count']}, "
            f"load average {machine['load_average_1m']} at start; threads {machine['threads']}",
            f"numpy {machine['numpy']} BLAS: {machine['numpy_blas']}",
            f"native kernels: {machine['native_isa'] or 'not built'} variant (EDGERUN_ISA forces one)",
            "(--threads sets onnxruntime's intra-op threads and edgerun's native threads; numpy's BLAS calls "
            "use the BLAS library's own thread count)"] + _blas_threads_warning(machine)


def _blas_threads_warning(machine: dict) -> list[str]:
    """On a shared machine a multi-threaded BLAS under contention slows numpy's matrix products
    many times over (seen here: 0.4 ms -> 7 ms for one Gemm), and not onnxruntime's single thread."""
    if any(var in os.environ for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        return []
    if machine["threads"] >= machine["cores_usable"]:
        return []
    return [f"note: BLAS threads are not limited; for a {machine['threads']}-thread comparison run with "
            f"OPENBLAS_NUM_THREADS={machine['threads']} in the environment"]


def format_summary(result: dict) -> list[str]:
    header = (f"{'configuration':<38} {'median ms':>10} {'x ORT':>7} {'x own fastest':>13} "
              f"{'planned peak':>13} {'measured':>10} {'est ms':>8} {'cal est':>8} {'max|diff|':>9}")
    lines = [f"{result['model']}", header, "-" * len(header)]
    for row in result["results"]:
        own = "-" if row["vs_own_fastest"] is None else f"{row['vs_own_fastest']:.2f}"
        peak = "-" if row["planned_peak_bytes"] is None else f"{row['planned_peak_bytes']:,}"
        measured = "-" if row["measured_peak_bytes"] is None else f"{row['measured_peak_bytes']:,}"
        est = "-" if row["estimated_ms"] is None else f"{row['estimated_ms']:.1f}"
        cal = "-" if row["calibrated_estimate_ms"] is None else f"{row['calibrated_estimate_ms']:.1f}"
        diff = "-" if row["max_abs_diff_vs_onnxruntime"] is None else f"{row['max_abs_diff_vs_onnxruntime']:.1e}"
        lines.append(f"{row['config']:<38} {row['median_ms']:>10.2f} {row['vs_onnxruntime']:>7.2f} {own:>13} "
                     f"{peak:>13} {measured:>10} {est:>8} {cal:>8} {diff:>9}")
    return lines


# ---------------------------------------------------------------- entry point
def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="edgerun bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_specs", nargs="*", metavar="MODEL",
                        help="zoo names, .onnx paths or light:NAME (default: all of " + ", ".join(DEFAULT_MODELS) + ")")
    parser.add_argument("--models", default="", metavar="A,B",
                        help="comma-separated models added to MODEL (also 'all', 'zoo', 'light'); "
                             "light:NAME is a light CNN of the onnx wheel with seeded random weights")
    parser.add_argument("--runs", type=_positive, default=DEFAULT_RUNS,
                        help=f"timed runs per configuration, median reported (default {DEFAULT_RUNS}; "
                             "fewer only for quick checks)")
    parser.add_argument("--warmup", type=_positive, default=DEFAULT_WARMUP)
    parser.add_argument("--threads", type=_positive, default=1,
                        help="onnxruntime intra-op threads and edgerun native threads (default 1)")
    parser.add_argument("--kernels", choices=("numpy", "native", "both"), default="both",
                        help="edgerun backends to time (default both; native only when it loads)")
    parser.add_argument("--budgets", default="", metavar="SIZE,SIZE",
                        help="also time the plan for each of these memory budgets (e.g. 400KB), where it lies "
                             "between the memory-minimal and the fastest plan's peak")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    args = parser.parse_args(argv)
    args.budgets = [parse_bytes(text.strip(), option="--budgets") for text in args.budgets.split(",") if text.strip()]
    return args


def bench_model(spec: str, args, backends: list[str]) -> dict:
    model, label = resolve_bench_model(spec)
    configs, _ = configurations(model, args.threads, backends, args.budgets)
    time_interleaved(configs, args.runs, args.warmup, label=label)
    return summary(label, configs)


def require_onnxruntime() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UsageError("edgerun bench times edgerun against onnxruntime, which is not installed: "
                         "pip install 'edgerun[parity]'") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    require_onnxruntime()
    backends = available_backends() if args.kernels == "both" else [args.kernels]
    machine = machine_description(args.threads)
    if not args.json:
        print("\n".join(format_machine(machine)))
        if "native" not in backends and args.kernels == "both":
            print("native kernels unavailable: numpy only")
    results = []
    specs = list(args.model_specs) + split_model_list(args.models)
    for spec in specs or DEFAULT_MODELS:
        result = bench_model(spec, args, backends)
        results.append(result)
        if not args.json:
            print()
            print("\n".join(format_summary(result)))
    machine["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps({"machine": machine, "runs": args.runs, "models": results}, indent=2))
    else:
        print(f"\nload average {machine['load_average_1m_end']} at the end; medians of {args.runs} timed "
              "runs after warm-up; ratios are to onnxruntime in this run and to the same backend's fastest plan")
        print("measured: arena + tracemalloc peak above it in one profiled (untimed) run; "
              "est ms: the plan's own estimate (the cost model the session planned with); cal est: the same plan "
              "under this machine's `edgerun calibrate` fit, '-' when none is saved")
        print()
        print("\n".join(format_ratios(results, args.threads)))
    return 0


def ratio_rows(results: list[dict], backend: str = "native") -> list[tuple[str, float, float | None]]:
    """(model, fastest plan / onnxruntime, memory-minimal plan / fastest plan) of one backend per model."""
    rows = []
    for result in results:
        plans = {r["plan"]: r for r in result["results"] if r["backend"] == backend}
        fastest = plans.get("fastest") or plans.get("fastest = memory-minimal")
        if fastest is None:
            continue
        minimal = plans.get("memory-minimal")
        rows.append((result["model"], fastest["vs_onnxruntime"],
                     minimal["vs_own_fastest"] if minimal else 1.0))
    return rows


def geometric_mean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def format_ratios(results: list[dict], threads: int) -> list[str]:
    lines = []
    for backend in ("native", "numpy"):
        rows = ratio_rows(results, backend)
        if not rows:
            continue
        lines += [f"edgerun {backend}, {threads} thread(s): fastest plan / onnxruntime, memory-minimal / fastest",
                  f"{'model':<32} {'x ORT':>7} {'min/fast':>9}"]
        lines += [f"{model:<32} {ratio:>7.2f} {minimal:>9.2f}" for model, ratio, minimal in rows]
        lines.append(f"{'geometric mean':<32} {geometric_mean(r for _, r, _ in rows):>7.2f} "
                     f"{geometric_mean(m for _, _, m in rows):>9.2f}")
    return lines
