"""tools/export_models.py writes loadable .onnx files that compute what the builders compute."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgerun.zoo import mobilenet_v2, shufflenet_v1

TOOL = Path(__file__).resolve().parents[1] / "tools" / "export_models.py"


@pytest.fixture(scope="module")
def export_tool():
    spec = importlib.util.spec_from_file_location("export_models", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _logits(model_or_path, x):
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_exported_files_compute_what_the_builders_compute(tmp_path, export_tool):
    names = ["mobilenet_v2_0.35_96", "shufflenet_v1_g3_2.0x_224"]
    assert export_tool.main([str(tmp_path), "--only", *names]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [entry["file"] for entry in manifest] == [f"{n}.onnx" for n in names]
    rng = np.random.default_rng(2)
    for entry, build in zip(manifest, [lambda: mobilenet_v2(0.35, 96), lambda: shufflenet_v1(3, 2.0, 224)]):
        path = tmp_path / entry["file"]
        onnx.checker.check_model(str(path), full_check=True)
        resolution = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[2].dim_value
        x = rng.normal(size=(1, 3, resolution, resolution)).astype(np.float32)
        np.testing.assert_array_equal(_logits(path, x), _logits(build(), x))
    assert manifest[1]["parameters"] == 5_450_776 and round(manifest[1]["macs"] / 1e6) == 524


def test_fixed_batch_and_name_listing(tmp_path, export_tool, capsys):
    assert export_tool.main([str(tmp_path), "--only", "mobilenet_v2_0.35_96", "--batch", "2"]) == 0
    model = onnx.load(str(tmp_path / "mobilenet_v2_0.35_96.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    capsys.readouterr()
    assert export_tool.main(["--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert "mobilenet_v2_1.0_224_pretrained" in listed and "mobilenet_v2_1.4_160" in listed
    assert len(listed) == 6 + 25 - 2  # two grid names repeat default ones (1.0/224, 0.35/96)


def test_unknown_model_name_is_a_usage_error(tmp_path, export_tool, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_tool.main([str(tmp_path), "--only", "resnet50"])
    assert exit_info.value.code == 2
    assert "resnet50" in capsys.readouterr().err
