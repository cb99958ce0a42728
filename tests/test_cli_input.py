"""`edgerun run` as image users expect it (preprocessing presets and overrides, --labels, [N, C, 1, 1] top-k,
several --input files, --json), messages that say what a file is, --version, the size rule on the command line,
and the JSON documents of run/plan/profile/bench against docs/json-schemas.md. CLI runs are subprocesses; every
tensor is built by hand here and every output checked against onnxruntime."""
import dataclasses
import json
import re
import tomllib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgerun
from conftest import run_ort
from edgerun.zoo.images import PRESETS, preprocess
from test_cli import assert_one_line_error, edgerun as edgerun_cli, with_symbolic_batch
from test_profiler import tiny_convnet

ROOT = Path(__file__).resolve().parent.parent
SIZE = 16


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _json(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("cli_input")


@pytest.fixture(scope="module")
def photos(folder):
    """Two 16x16 RGB photos (the model's size, so that --resize 16 leaves them exactly as they are)."""
    from PIL import Image
    rng = np.random.default_rng(11)
    paths, pixels = [], []
    for i in range(2):
        image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"photo{i}.png")
        paths.append(folder / f"photo{i}.png")
        pixels.append(image)
    return paths, pixels


@pytest.fixture(scope="module")
def classifier(folder):
    model = tiny_convnet(classes=10)
    onnx.save(model, folder / "ten.onnx")
    (folder / "ten.txt").write_text("".join(f"thing {i}\n" for i in range(10)) + "\n\n", encoding="utf-8")
    return model, folder / "ten.onnx", folder / "ten.txt"


def _labels_check(report_output, logits, k):
    """The JSON top-k rows rank onnxruntime's softmax probabilities, with the label file's names."""
    probs = _softmax(logits.astype(np.float64))
    assert len(report_output["top_k"]) == len(probs)
    for row, p in zip(report_output["top_k"], probs):
        order = np.argsort(-p, kind="stable")[:k]
        assert [e["class"] for e in row] == order.tolist()
        assert [e["label"] for e in row] == [f"thing {i}" for i in order]
        assert np.allclose([e["probability"] for e in row], p[order], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- preprocessing
def test_caffe_preset_is_bgr_0_255_minus_the_mean():
    image = np.full((4, 4, 3), (10, 20, 30), np.uint8)   # uniform: resizing cannot change it
    x = preprocess(image, 4, 4, PRESETS["caffe"])
    assert x.shape == (1, 3, 4, 4)
    assert np.array_equal(x[0, :, 0, 0], np.float32([30 - 104, 20 - 117, 10 - 123]))


def test_raw_preset_keeps_pixel_values():
    image = np.random.default_rng(3).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    x = preprocess(image, 5, 5, dataclasses.replace(PRESETS["raw"], resize=5))
    assert np.array_equal(x[0], image.transpose(2, 0, 1).astype(np.float32))


def test_run_with_the_caffe_preset_feeds_the_hand_built_tensor(classifier, photos):
    model, path, labels = classifier
    report = _json(edgerun_cli("run", path, "--input", photos[0][0], "--preprocess", "caffe", "--resize", SIZE,
                               "--labels", labels, "--top", 10, "--json"))
    hand = (photos[1][0][:, :, ::-1].astype(np.float32) - np.float32([104, 117, 123])).transpose(2, 0, 1)[None]
    _labels_check(report["outputs"][0], run_ort(model, {"x": np.ascontiguousarray(hand)})[0], 10)
    assert report["preprocess"] == {"mean": [104.0, 117.0, 123.0], "std": [1.0, 1.0, 1.0], "channel_order": "bgr",
                                    "scale": 255.0, "resize": SIZE}


def test_overrides_apply_over_the_preset(classifier, photos):
    model, path, labels = classifier
    report = _json(edgerun_cli("run", path, "--input", photos[0][1], "--resize", SIZE, "--channel-order", "bgr",
                               "--scale", 255, "--mean", "1,2,3", "--std", "2,4,8", "--labels", labels,
                               "--top", 4, "--json"))
    bgr = photos[1][1][:, :, ::-1].astype(np.float32)
    hand = ((bgr - np.float32([1, 2, 3])) / np.float32([2, 4, 8])).transpose(2, 0, 1)[None]
    _labels_check(report["outputs"][0], run_ort(model, {"x": np.ascontiguousarray(hand)})[0], 4)


@pytest.mark.parametrize("option, value, fragment", [("--mean", "1,2", "--mean '1,2'"),
                                                      ("--std", "1,0,1", "non-zero"),
                                                      ("--scale", "-1", "positive"),
                                                      ("--scale", "nan", "positive")])
def test_bad_preprocessing_values_are_one_line_errors(classifier, option, value, fragment):
    assert_one_line_error(edgerun_cli("run", classifier[1], option, value), 2, fragment)


def test_preprocessing_options_with_an_array_input_are_refused(classifier, folder):
    np.save(folder / "x.npy", np.zeros((1, 3, SIZE, SIZE), np.float32))
    result = edgerun_cli("run", classifier[1], "--input", folder / "x.npy", "--preprocess", "caffe")
    assert_one_line_error(result, 2, "--preprocess", "x.npy", "array")


# ---------------------------------------------------------------- labels and [N, C, 1, 1]
def _pooled_classifier(classes=10, batch=1):
    """conv 3x3 -> conv 1x1 to `classes` channels -> GlobalAveragePool: output [N, classes, 1, 1]."""
    rng = np.random.default_rng(8)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((classes, 6, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("GlobalAveragePool", ["c2"], ["prob"], name="pool")]
    graph = helper.make_graph(nodes, "pooled", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [batch, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, classes, 1, 1])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_top_k_of_an_n_c_1_1_output_uses_the_labels_file(classifier, folder):
    model = _pooled_classifier()
    onnx.save(model, folder / "pooled.onnx")
    x = np.random.default_rng(9).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    np.save(folder / "px.npy", x)
    result = edgerun_cli("run", folder / "pooled.onnx", "--input", folder / "px.npy", "--labels", classifier[2],
                         "--top", 3)
    assert result.returncode == 0, result.stderr
    logits = run_ort(model, {"x": x})[0].reshape(1, 10)
    best = int(np.argmax(logits[0]))
    p = _softmax(logits[0].astype(np.float64))[best]
    assert "output 'prob' [1, 10, 1, 1]: top-3 (softmax probabilities)" in result.stdout
    assert f"1. {p:7.4f}  thing {best}  (class {best})" in result.stdout
    report = _json(edgerun_cli("run", folder / "pooled.onnx", "--input", folder / "px.npy", "--labels",
                               classifier[2], "--top", 3, "--json"))
    _labels_check(report["outputs"][0], logits, 3)
    assert report["preprocess"] is None


def test_labels_that_fit_no_output_say_so(classifier, folder):
    (folder / "three.txt").write_text("a\nb\nc\n", encoding="utf-8")
    result = edgerun_cli("run", classifier[1], "--labels", folder / "three.txt")
    assert result.returncode == 0, result.stderr
    assert "edgerun: note: --labels holds 3 labels, but no output has 3 classes" in result.stderr
    assert "min " in result.stdout


@pytest.mark.parametrize("content, fragment", [(None, "no such file"), (b"", "no labels"),
                                               (b"\xff\xfe\x00bad", "not a UTF-8 text file")])
def test_unusable_labels_files_are_one_line_errors(classifier, folder, content, fragment):
    path = folder / f"labels_{len(content or b'')}.txt"
    if content is not None:
        path.write_bytes(content)
    assert_one_line_error(edgerun_cli("run", classifier[1], "--labels", path), 2, "--labels", fragment)


# ---------------------------------------------------------------- several inputs
def _hand_imagenet(image):
    x = image.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def test_several_images_are_one_batch_on_a_symbolic_batch_model(classifier, photos, folder):
    model = with_symbolic_batch(classifier[0])
    onnx.save(model, folder / "dyn.onnx")
    report = _json(edgerun_cli("run", folder / "dyn.onnx", "--input", photos[0][0], "--input", photos[0][1],
                               "--resize", SIZE, "--labels", classifier[2], "--top", 10, "--json"))
    assert report["runs"] == 1 and report["inputs"] == [str(p) for p in photos[0]]
    assert report["outputs"][0]["shape"] == [2, 10]
    batch = np.concatenate([_hand_imagenet(image) for image in photos[1]])
    _labels_check(report["outputs"][0], run_ort(model, {"x": batch})[0], 10)
    session = edgerun.InferenceSession(str(folder / "dyn.onnx"))
    assert report["planned_peak_bytes"] == session.prepare({"x": (2, 3, SIZE, SIZE)}).peak_bytes


def test_several_inputs_on_a_fixed_batch_model_run_one_by_one(classifier, photos):
    model, path, labels = classifier
    result = edgerun_cli("run", path, "--input", photos[0][0], "--input", photos[0][1], "--resize", SIZE,
                         "--labels", labels, "--top", 1)
    assert result.returncode == 0, result.stderr
    assert f"item 0: {photos[0][0]}" in result.stdout and f"item 1: {photos[0][1]}" in result.stdout
    report = _json(edgerun_cli("run", path, "--input", photos[0][0], "--input", photos[0][1], "--resize", SIZE,
                               "--labels", labels, "--top", 10, "--json"))
    assert report["runs"] == 2 and report["outputs"][0]["shape"] == [2, 10]
    logits = np.concatenate([run_ort(model, {"x": _hand_imagenet(image)})[0] for image in photos[1]])
    _labels_check(report["outputs"][0], logits, 10)


# ---------------------------------------------------------------- messages that say what is wrong
def test_version_is_the_package_version():
    result = edgerun_cli("--version")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert result.returncode == 0 and result.stdout.strip() == f"edgerun {version}"


def test_a_directory_given_to_input_is_called_a_directory(classifier, folder):
    assert_one_line_error(edgerun_cli("run", classifier[1], "--input", folder), 2, "is a directory")


@pytest.mark.parametrize("name, content, kind", [("notes.onnx", b"just some notes\n", "is a text file"),
                                                 ("x.onnx", b"\x93NUMPY\x01\x00", "numpy .npy array"),
                                                 ("empty.onnx", b"", "is an empty file")])
def test_run_says_what_a_file_that_is_not_onnx_is(folder, name, content, kind):
    (folder / name).write_bytes(content)
    result = edgerun_cli("run", folder / name)
    assert_one_line_error(result, 2, kind)
    assert "protobuf" not in result.stderr


@pytest.fixture(scope="module")
def bundle(classifier, folder):
    from edgerun.compiler import compile_bundle
    compile_bundle(str(classifier[1]), str(folder / "ten.erb"))
    return folder / "ten.erb"


def test_compile_of_a_bundle_says_it_is_a_bundle(bundle, folder):
    result = edgerun_cli("compile", bundle, "-o", folder / "again.erb")
    assert result.returncode == 2
    assert "is an edgerun bundle" in result.stderr and "protobuf" not in result.stderr
    assert not (folder / "again.erb").exists()


def test_a_budget_given_with_a_bundle_is_said_to_be_unused(bundle):
    arena = edgerun.load(str(bundle)).plan.peak_bytes
    result = edgerun_cli("run", bundle, "--budget", "4MB")
    assert result.returncode == 0, result.stderr
    assert "edgerun: note: --budget 4MB is not used to plan" in result.stderr
    assert f"arena {arena:,} B" in result.stderr
    assert_one_line_error(edgerun_cli("run", bundle, "--budget", arena - 1), 2, "compiled for an arena")


def test_bench_without_onnxruntime_names_the_parity_extra(classifier):
    result = edgerun_cli("bench", classifier[1], "--runs", 1, block=["onnxruntime"])
    assert_one_line_error(result, 2, "onnxruntime", "pip install 'edgerun[parity]'")
    assert "internal error" not in result.stderr


@pytest.mark.parametrize("budget, fragment", [("1.5", "whole number of bytes"), ("2M", "ambiguous"),
                                              ("64k", "ambiguous")])
def test_the_command_line_refuses_what_the_size_rule_refuses(classifier, budget, fragment):
    assert_one_line_error(edgerun_cli("plan", classifier[1], "--budget", budget), 2, "--budget", fragment)


def test_the_command_line_reads_1e6_as_python_does(classifier):
    assert _json(edgerun_cli("plan", classifier[1], "--budget", "1e6", "--json"))["budget_bytes"] == 1_000_000


# ---------------------------------------------------------------- JSON documents against docs/json-schemas.md
def documented_schemas() -> dict:
    text = (ROOT / "docs" / "json-schemas.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- schema: (\w+) -->\s*```json\n(.*?)```", text, re.S)
    return {name: json.loads(body) for name, body in blocks}


def key_paths(value, prefix="") -> set:
    """Every key path of a JSON value; list items are merged under '[]'. A null adds no deeper path."""
    paths = set()
    if isinstance(value, dict):
        for key, item in value.items():
            paths.add(f"{prefix}.{key}")
            paths |= key_paths(item, f"{prefix}.{key}")
    elif isinstance(value, list):
        for item in value:
            paths |= key_paths(item, f"{prefix}[]")
    return paths


def null_paths(value, prefix="") -> set:
    """Key paths whose value is null or an empty list somewhere in a JSON value."""
    paths = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if item is None or item == []:
                paths.add(f"{prefix}.{key}")
            paths |= null_paths(item, f"{prefix}.{key}")
    elif isinstance(value, list):
        for item in value:
            paths |= null_paths(item, f"{prefix}[]")
    return paths


def _under_a_null(documented: set, actual_document) -> set:
    """Documented paths below a key that is null (or []) in this output, e.g. inside top_k of a plain output."""
    nulls = null_paths(actual_document)
    return {p for p in documented if any(p.startswith((n + ".", n + "[]")) for n in nulls)}


@pytest.fixture(scope="module")
def real_documents(classifier, photos, folder):
    model, path, labels = classifier
    return {
        "run": _json(edgerun_cli("run", path, "--input", photos[0][0], "--input", photos[0][1], "--labels", labels,
                                 "--top", 2, "--json")),
        "plan": _json(edgerun_cli("plan", path, "--json")),
        "profile": _json(edgerun_cli("profile", path, "--format", "json")),
        "bench": _json(edgerun_cli("bench", path, "--runs", 1, "--warmup", 1, "--kernels", "numpy", "--json")),
    }


@pytest.mark.parametrize("command", ["run", "plan", "profile", "bench"])
def test_json_output_has_exactly_the_documented_keys(real_documents, command):
    documented = key_paths(documented_schemas()[command])
    actual = key_paths(real_documents[command])
    assert actual - documented == set()
    assert documented - actual - _under_a_null(documented, real_documents[command]) == set()


def test_every_documented_key_is_in_the_tables_too():
    text = (ROOT / "docs" / "json-schemas.md").read_text(encoding="utf-8")
    for command, schema in documented_schemas().items():
        for path in key_paths(schema):
            leaf = path.rsplit(".", 1)[-1]
            assert f"`{leaf}`" in text or f".{leaf}`" in text or f"`{leaf}," in text, (command, path)


def test_compile_reads_its_budget_by_the_same_rule(classifier, folder):
    result = edgerun_cli("compile", classifier[1], "--budget", "2M", "-o", folder / "ambiguous.erb")
    assert result.returncode == 2 and "--budget: '2M' is ambiguous" in result.stderr
    assert not (folder / "ambiguous.erb").exists()


def test_json_of_a_nan_output_is_valid_json_with_nulls(folder):
    graph = helper.make_graph([helper.make_node("Sqrt", ["x"], ["y"], name="root")], "roots",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), folder / "roots.onnx")
    np.save(folder / "neg.npy", np.float32([[4.0, -1.0, 9.0, 16.0]]))
    result = edgerun_cli("run", folder / "roots.onnx", "--input", folder / "neg.npy", "--json")
    output = _json(result)["outputs"][0]   # json.loads would accept NaN; the text must not hold it
    assert "NaN" not in result.stdout and "Infinity" not in result.stdout
    assert (output["min"], output["max"], output["mean"], output["top_k"]) == (None, None, None, None)
    text = edgerun_cli("run", folder / "roots.onnx", "--input", folder / "neg.npy")
    assert "output 'y' [1, 4] float32: min nan max nan mean nan" in text.stdout
