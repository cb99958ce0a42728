"""The `edgerun` command line, run as a subprocess, checked against onnxruntime, the session's own
plan and the scheduler's minimum; plus the progress bar."""
import csv
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest

from conftest import run_ort
from edgerun import InferenceSession, cli, progress as progress_module
from edgerun.zoo.images import imagenet_labels, preprocess_imagenet, sample_image
from test_profiler import PNG_SIGNATURE, tiny_block_net, tiny_convnet

SMALL_ZOO = "mobilenet_v2:width=0.35,resolution=96"


def edgerun(*args, block=(), env=None):
    """Run the CLI in a fresh interpreter; `block` names modules made unimportable there."""
    prelude = "".join(f"sys.modules[{m!r}] = None; " for m in block)
    code = f"import sys; {prelude}from edgerun.cli import main; sys.exit(main(sys.argv[1:]))"
    full_env = {k: v for k, v in os.environ.items() if k != "EDGERUN_DEBUG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=600)


def assert_one_line_error(result, code, *fragments):
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgerun: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def _number_after(label, text):
    match = re.search(rf"{label}\s+([\d,]+) B", text)
    assert match, text
    return int(match.group(1).replace(",", ""))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    paths = {"tiny": folder / "tiny.onnx", "classifier": folder / "classifier.onnx", "block": folder / "block.onnx"}
    onnx.save(tiny_convnet(), paths["tiny"])
    onnx.save(tiny_convnet(classes=1000), paths["classifier"])
    onnx.save(tiny_block_net(), paths["block"])
    return paths


def with_symbolic_batch(model, spatial=False):
    """The model with dimension 0 (and the spatial ones when asked) of its input and output symbolic."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    if spatial:
        for axis in (2, 3):
            model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = "S"
    return model


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


# ---------------------------------------------------------------- run
def test_run_prints_top_k_as_onnxruntime_ranks_them(files, tmp_path):
    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = edgerun("run", files["classifier"], "--input", tmp_path / "x.npy", "--top", 3)
    assert result.returncode == 0, result.stderr
    probs = _softmax(run_ort(onnx.load(files["classifier"]), {"x": x})[0][0].astype(np.float64))
    labels = imagenet_labels()
    for rank, cls in enumerate(np.argsort(-probs)[:3], 1):
        assert f"{rank}. {probs[cls]:7.4f}  {labels[cls]}  (class {cls})" in result.stdout
    assert "4. " not in result.stdout
    assert "top-3 (softmax probabilities)" in result.stdout


def test_top_k_softmaxes_logits_by_hand():
    top = cli.top_k(np.array([0.0, np.log(3.0), -np.inf]), 2, ["a", "b", "c"])
    assert [(e["label"], e["class"]) for e in top] == [("b", 1), ("a", 0)]
    assert np.allclose([e["probability"] for e in top], [0.75, 0.25])


def test_top_k_keeps_probabilities_as_they_are():
    top = cli.top_k(np.array([0.1, 0.7, 0.2]), 3, None)
    assert [(e["label"], e["probability"]) for e in top] == [("1", 0.7), ("2", 0.2), ("0", 0.1)]


def test_run_reports_the_plans_peak_and_a_measured_peak_above_it(files):
    result = edgerun("run", files["tiny"], "--kernels", "numpy")
    assert result.returncode == 0, result.stderr
    planned = _number_after("planned peak:", result.stdout)
    assert planned == InferenceSession(str(files["tiny"])).plan.peak_bytes
    assert _number_after("measured peak:", result.stdout) >= planned
    assert "output 'y' [1, 10] float32" in result.stdout
    assert "kernels:       numpy" in result.stdout
    assert "none (fastest schedule)" in result.stdout


def test_run_with_a_symbolic_batch_ranks_every_item(tmp_path):
    model = with_symbolic_batch(tiny_convnet(classes=1000))
    onnx.save(model, tmp_path / "dyn.onnx")
    x = np.random.default_rng(6).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    result = edgerun("run", tmp_path / "dyn.onnx", "--input", tmp_path / "x.npz", "--top", 1)
    assert result.returncode == 0, result.stderr
    logits = run_ort(model, {"x": x})[0]
    items = result.stdout.split("item 1:")
    assert len(items) == 2 and "item 0:" in items[0]
    for text, row in zip(items, logits):
        cls = int(np.argmax(row))
        assert f"1. {_softmax(row.astype(np.float64))[cls]:7.4f}  {imagenet_labels()[cls]}  (class {cls})" in text


def test_plan_of_a_symbolic_batch_is_the_plan_for_one_image(tmp_path):
    onnx.save(with_symbolic_batch(tiny_convnet()), tmp_path / "dyn.onnx")
    result = edgerun("plan", tmp_path / "dyn.onnx", "--json")
    assert result.returncode == 0, result.stderr
    session = InferenceSession(str(tmp_path / "dyn.onnx"))
    assert json.loads(result.stdout)["planned_peak_bytes"] == session.prepare({"x": (1, 3, 16, 16)}).peak_bytes


def test_plan_of_symbolic_image_size_asks_for_data(tmp_path):
    onnx.save(with_symbolic_batch(tiny_convnet(), spatial=True), tmp_path / "dyn.onnx")
    assert_one_line_error(edgerun("plan", tmp_path / "dyn.onnx"), 2, "'x'", "--input")


def test_run_with_symbolic_image_size_takes_the_size_of_the_data(tmp_path):
    model = with_symbolic_batch(tiny_convnet(), spatial=True)
    onnx.save(model, tmp_path / "dyn.onnx")
    x = np.random.default_rng(7).standard_normal((1, 3, 20, 20)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = edgerun("run", tmp_path / "dyn.onnx", "--input", tmp_path / "x.npy")
    assert result.returncode == 0, result.stderr
    y = run_ort(model, {"x": x})[0]
    match = re.search(r"output 'y' \[1, 10\] float32: min (\S+) max (\S+) mean (\S+)", result.stdout)
    assert match, result.stdout
    assert np.allclose([float(v) for v in match.groups()], [y.min(), y.max(), y.mean()], rtol=1e-4, atol=1e-6)
    session = InferenceSession(str(tmp_path / "dyn.onnx"))
    assert _number_after("planned peak:", result.stdout) == session.prepare({"x": (1, 3, 20, 20)}).peak_bytes


def test_run_reads_a_png_with_imagenet_preprocessing(files, tmp_path):
    from PIL import Image
    Image.fromarray(sample_image()).save(tmp_path / "cat.png")
    result = edgerun("run", files["classifier"], "--input", tmp_path / "cat.png", "--top", 1)
    assert result.returncode == 0, result.stderr
    x = preprocess_imagenet(np.asarray(Image.open(tmp_path / "cat.png")), resize=18, crop=16)
    cls = int(np.argmax(run_ort(onnx.load(files["classifier"]), {"x": x})[0][0]))
    assert f"{imagenet_labels()[cls]}  (class {cls})" in result.stdout


def test_run_image_without_pillow_says_how_to_install_it(files, tmp_path):
    (tmp_path / "cat.png").write_bytes(PNG_SIGNATURE)
    result = edgerun("run", files["classifier"], "--input", tmp_path / "cat.png", block=["PIL"])
    assert_one_line_error(result, 2, "--input", "pip install 'edgerun[image]'")


@pytest.mark.parametrize("name, content, fragment", [("junk.png", b"junk", "not a readable image"),
                                                     ("missing.npy", None, "no such file"),
                                                     ("data.txt", b"1 2 3", "unknown file type '.txt'")])
def test_run_unusable_input_files_are_one_line_errors(files, tmp_path, name, content, fragment):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    assert_one_line_error(edgerun("run", files["tiny"], "--input", tmp_path / name), 2, name, fragment)


def test_run_npy_of_the_wrong_shape_names_the_input(files, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 8, 8), np.float32))
    result = edgerun("run", files["tiny"], "--input", tmp_path / "bad.npy")
    assert_one_line_error(result, 2, "bad.npy", "'x'", "[1, 3, 16, 16]", "[1, 3, 8, 8]")


def test_run_npz_without_the_input_name_lists_what_it_holds(files, tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros(1, np.float32), b=np.zeros(1, np.float32))
    result = edgerun("run", files["tiny"], "--input", tmp_path / "two.npz")
    assert_one_line_error(result, 2, "two.npz", "['x']", "['a', 'b']")


def test_run_pickled_npy_is_refused(files, tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    result = edgerun("run", files["tiny"], "--input", tmp_path / "obj.npy")
    assert_one_line_error(result, 2, "obj.npy")


def test_run_default_is_the_pretrained_mobilenet_v2_on_the_sample_photo():
    result = edgerun("run", "--top", 1)
    assert result.returncode == 0, result.stderr
    model, _ = cli.resolve_model(None)
    logits = run_ort(model, {"input": preprocess_imagenet(sample_image())})[0][0]
    cls = int(np.argmax(logits))
    assert imagenet_labels()[cls] in ("tabby", "tiger cat", "Egyptian cat")
    assert f"{imagenet_labels()[cls]}  (class {cls})" in result.stdout
    assert "bundled sample photo" in result.stdout


# ---------------------------------------------------------------- profile
def test_profile_json_rows_are_the_plans_steps(files):
    result = edgerun("profile", files["tiny"], "--format", "json", "--runs", 2, "--budget", "1MB")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    plan = InferenceSession(str(files["tiny"]), memory_budget=1_000_000).plan
    assert [r["name"] for r in report["rows"]] == [s.name for s in plan.steps]
    assert [r["planned_bytes"] for r in report["rows"]] == [s.bytes for s in plan.steps]
    totals = report["totals"]
    assert totals["planned_peak_bytes"] == plan.peak_bytes
    assert max(r["planned_bytes"] for r in report["rows"]) == totals["max_step_planned_bytes"] <= plan.peak_bytes
    assert totals["measured_peak_bytes"] == totals["planned_peak_bytes"] + totals["escaped_bytes"]
    assert all(r["measured_bytes"] == r["planned_bytes"] + r["escaped_bytes"] for r in report["rows"])
    assert totals["weights_bytes"] == 4 * 306 and totals["params"] == 306
    assert report["budget_bytes"] == 1_000_000 and report["runs"] == 2


def test_profile_csv_parses_with_hand_worked_columns(files):
    result = edgerun("profile", files["tiny"], "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["name"] for r in rows] == [s.name for s in InferenceSession(str(files["tiny"])).plan.steps]
    conv1 = next(r for r in rows if r["name"] == "conv1")
    assert (conv1["inputs"], conv1["outputs"]) == ("1x3x16x16", "1x8x8x8")
    assert (int(conv1["macs"]), int(conv1["params"])) == (8 * 8 * 8 * 27, 224)
    assert "planned peak" in result.stderr


def test_profile_table_lists_every_step_and_the_totals(files):
    result = edgerun("profile", files["tiny"])
    assert result.returncode == 0, result.stderr
    for name in ("conv1", "conv2", "pool", "flatten", "fc"):
        assert re.search(rf"^\s*\d+ {name}\s", result.stdout, re.MULTILINE), name
    planned = InferenceSession(str(files["tiny"])).plan.peak_bytes
    assert _number_after("planned peak:", result.stdout) == planned
    assert "process RSS:" in result.stdout and "weights:        1,224 B" in result.stdout


def test_profile_plot_writes_a_png(files, tmp_path):
    result = edgerun("profile", files["tiny"], "--plot", tmp_path / "mem.png", "--budget", "64KiB")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mem.png").read_bytes()[:8] == PNG_SIGNATURE


def test_profile_plot_without_matplotlib_exits_2_with_the_install_hint(files, tmp_path):
    result = edgerun("profile", files["tiny"], "--plot", tmp_path / "mem.png", block=["matplotlib"])
    assert_one_line_error(result, 2, "pip install 'edgerun[plot]'")
    assert not (tmp_path / "mem.png").exists()


def test_profile_accepts_a_zoo_name_with_options():
    result = edgerun("profile", SMALL_ZOO, "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    model, _ = cli.resolve_model(SMALL_ZOO)
    plan = InferenceSession(model).plan
    assert [r["planned_bytes"] for r in report["rows"]] == [s.bytes for s in plan.steps]
    assert sum(r["is_block"] for r in report["rows"]) == sum(s.kind == "InvertedResidual" for s in plan.steps) > 0


# ---------------------------------------------------------------- plan
def test_plan_json_is_the_sessions_plan(files):
    result = edgerun("plan", files["block"], "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    plan = InferenceSession(str(files["block"])).plan
    assert report["planned_peak_bytes"] == plan.peak_bytes
    assert [(r["name"], r["t"], r["band_rows"], r["planned_bytes"]) for r in report["rows"]] == \
        [(s.name, s.t, s.band_rows, s.bytes) for s in plan.steps]
    assert any(r["is_block"] for r in report["rows"])


def test_plan_table_shows_the_split_of_each_block(files):
    plan = InferenceSession(str(files["block"])).plan
    result = edgerun("plan", files["block"])
    assert result.returncode == 0, result.stderr
    for s in plan.steps:
        assert re.search(rf"{re.escape(s.name)}\s+{s.kind[:18]}\s+{s.t}\s+{s.band_rows}\s+{s.bytes:,}",
                         result.stdout), s.name
    assert f"planned peak: {plan.peak_bytes:,} B" in result.stdout


def test_impossible_budget_exits_3_with_the_minimum(files):
    # with the default thread count a budget may fall back to fewer threads, so the reachable minimum is one thread's
    import scheduler
    session = InferenceSession(str(files["block"]), threads=1)
    minimum, _ = scheduler.minimum_peak(session._last.problem, alignment=session.plan.alignment)
    result = edgerun("plan", files["block"], "--budget", 100)
    assert_one_line_error(result, 3, f"is {minimum} bytes", f"try --budget {minimum}")
    assert result.stdout == ""


def test_the_minimum_budget_itself_fits(files):
    import scheduler
    session = InferenceSession(str(files["block"]))
    minimum, _ = scheduler.minimum_peak(session._last.problem, alignment=session.plan.alignment)
    result = edgerun("plan", files["block"], "--budget", minimum, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["planned_peak_bytes"] <= minimum


# ---------------------------------------------------------------- model names
def test_zoo_options_reach_the_builder_with_batch_one():
    model, label = cli.resolve_model(SMALL_ZOO)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert (dims, label) == ([1, 3, 96, 96], SMALL_ZOO)


@pytest.mark.parametrize("name, reference_bytes", [("mobilenet_v2", 802_816), ("mobilenet_v2_pretrained", 802_816),
                                                   ("mobilenet_v1", 3_211_264), ("shufflenet_v1", 1_254_400),
                                                   ("mobilenet_v3_small_like", None)])
def test_zoo_names_get_the_table3_reference_of_their_family(name, reference_bytes):
    from edgerun.cli.plot import table3_reference
    model, _ = cli.resolve_model(name)
    reference = table3_reference(model.graph.name, [1, 3, 224, 224])
    assert (reference and reference["bytes"]) == reference_bytes


# ---------------------------------------------------------------- bad usage
@pytest.mark.parametrize("command", ["run", "profile", "plan"])
def test_bad_budget_string_exits_2_naming_the_option(files, command):
    assert_one_line_error(edgerun(command, files["tiny"], "--budget", "12 parsecs"), 2, "--budget", "12 parsecs")


def test_unknown_model_lists_the_zoo(tmp_path):
    assert_one_line_error(edgerun("plan", tmp_path / "nope.onnx"), 2, "nope.onnx", "mobilenet_v2_pretrained")


def test_unknown_zoo_option_lists_the_known_ones():
    assert_one_line_error(edgerun("plan", "mobilenet_v2:depth=3"), 2, "depth", "width")


def test_corrupt_model_file_is_one_line(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    result = edgerun("plan", tmp_path / "junk.onnx")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("edgerun: error:")


def test_debug_shows_the_traceback(files):
    result = edgerun("plan", files["tiny"], "--budget", "nonsense", env={"EDGERUN_DEBUG": "1"})
    assert result.returncode == 2 and "Traceback" in result.stderr


@pytest.mark.parametrize("args, option", [(["--runs", "0"], "--runs"), (["--format", "xml"], "--format")])
def test_bad_profile_options_exit_2(files, args, option):
    result = edgerun("profile", files["tiny"], *args)
    assert result.returncode == 2 and option in result.stderr and "Traceback" not in result.stderr


def test_python_dash_m_edgerun_runs_the_cli(files):
    result = subprocess.run([sys.executable, "-m", "edgerun", "plan", str(files["tiny"]), "--json"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["planned_peak_bytes"] == InferenceSession(str(files["tiny"])).plan.peak_bytes


# ---------------------------------------------------------------- other tools' subcommands
def test_external_command_dispatches_its_arguments(tmp_path, monkeypatch):
    (tmp_path / "fake_tool_for_cli.py").write_text("def main(argv):\n    return 10 + len(argv)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.EXTERNAL_COMMANDS, "bench", ("fake_tool_for_cli", "main", "test"))
    assert cli.main(["bench", "--a", "b"]) == 12


def test_missing_external_command_says_it_is_not_available(monkeypatch, capsys):
    monkeypatch.setitem(cli.EXTERNAL_COMMANDS, "table3", ("edgerun.no_such_tool_module", "main", "test"))
    assert cli.main(["table3"]) == 2
    assert "'table3' command is not available" in capsys.readouterr().err


# ---------------------------------------------------------------- progress bar
class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_silent_when_not_a_terminal():
    stream = io.StringIO()
    assert list(progress_module.progress(range(4), label="x", stream=stream)) == [0, 1, 2, 3]
    assert stream.getvalue() == ""


def test_progress_draws_the_final_count_on_a_terminal():
    stream = _Terminal()
    assert list(progress_module.progress(iter("abc"), total=3, label="runs", stream=stream)) == ["a", "b", "c"]
    assert stream.getvalue().endswith("\r" + progress_module.render(3, 3, "runs") + "\n")


def test_progress_render_by_hand():
    assert progress_module.render(5, 10, "runs") == "runs [" + "#" * 12 + "-" * 12 + "]  5/10"
    assert progress_module.render(7, None) == "7"
