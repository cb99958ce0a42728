"""Every README snippet runs as written: the ```python blocks in a fresh interpreter in an empty folder; the
```bash tour lines parsed by the real parsers and, except the slow tools (bench, calibrate, table3), run in
order in one folder, with the exit code a `# exit N:` comment announces. Also the schedule names the README
uses (`features.2`) and the first command's printed output."""
import importlib
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

import edgerun
from edgerun.errors import InvalidOptionError

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SLOW_COMMANDS = {"bench", "calibrate", "table3"}   # minutes, and timing: parsed here, run by their own tests
TIMEOUT = 600


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def tour_lines() -> list[tuple[str, int]]:
    """(command, expected exit code) for every command line of the tour (the ```bash block after '## A tour')."""
    tour = README[README.index("## A tour"):]
    body = re.search(r"```bash\n(.*?)```", tour, re.S).group(1)
    lines = []
    for line in body.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        command, _, comment = line.partition("  #")
        expected = re.match(r"\s*exit (\d+)", comment)
        lines.append((command.strip(), int(expected.group(1)) if expected else 0))
    return lines


def environment() -> dict:
    import os
    env = {k: v for k, v in os.environ.items() if k not in ("EDGERUN_DEBUG", "PYTHONPATH")}
    env["PYTHONPATH"] = str(ROOT)   # this checkout, from any folder
    env["MPLBACKEND"] = "Agg"
    return env


def argv_of(command: str) -> list[str]:
    """The command as this test runs it: `edgerun` and `python` are this interpreter on this checkout."""
    words = shlex.split(command)
    if words[0] == "edgerun":
        return [sys.executable, "-m", "edgerun", *words[1:]]
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    raise AssertionError(f"the tour runs only edgerun and python, not {command!r}")


# ---------------------------------------------------------------- python
def test_the_readme_has_python_and_tour_snippets():
    assert len(blocks("python")) >= 1 and len(tour_lines()) >= 10


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_snippet_runs_as_written(tmp_path, index):
    code = blocks("python")[index]
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment(), capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    if "Egyptian cat" in code:   # the comments state what it prints
        assert "Egyptian cat" in result.stdout.splitlines()
        assert "input ['batch', 3, 224, 224]" in result.stdout


# ---------------------------------------------------------------- bash
def test_every_tour_command_parses():
    cli_main = importlib.import_module("edgerun.cli.main")
    from edgerun.cli.bench import parse_args as bench_args
    from edgerun.cli.compile import _compile_parser
    for command, _ in tour_lines():
        words = shlex.split(command)
        if words[0] == "python":
            continue
        assert words[0] == "edgerun", command
        if words[1:] == ["--version"]:
            continue
        if words[1] == "compile":
            _compile_parser().parse_args(words[2:])
        elif words[1] == "bench":
            bench_args(words[2:])
        elif words[1] in cli_main.EXTERNAL_COMMANDS:
            assert words[1] in SLOW_COMMANDS, command
        else:
            cli_main.build_parser().parse_args(words[1:])


def test_the_tour_runs_as_written(tmp_path):
    ran = []
    for command, expected in tour_lines():
        if shlex.split(command)[1:2] and shlex.split(command)[1] in SLOW_COMMANDS:
            continue
        result = subprocess.run(argv_of(command), cwd=tmp_path, env=environment(), capture_output=True, text=True,
                                timeout=TIMEOUT)
        assert result.returncode == expected, (command, result.stderr)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr, (command, result.stderr)
        ran.append(command)
    assert {"model.onnx", "cat.jpg", "profile.png", "mnv2.erb"} <= {p.name for p in tmp_path.iterdir()}
    assert len(ran) >= 10


def test_the_first_command_prints_what_the_readme_shows():
    shown = re.search(r"What the first command prints.*?```\n(.*?)```", README, re.S).group(1).splitlines()
    result = subprocess.run([sys.executable, "-m", "edgerun", "run", "--budget", "1.2MB"], cwd=ROOT,
                            env=environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    assert printed[:8] == shown[:8]   # model, input and the top-5 (kernel and thread dependent lines follow)
    assert [line.split(":")[0] for line in printed] == [line.split(":")[0] for line in shown]


def test_extras_the_readme_names_exist():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in set(re.findall(r"edgerun\[(\w+)\]", README)) | set(re.findall(r'"\.\[(\w+)\]"', README)):
        assert name in extras, name
    assert any(req.lower().startswith("pillow") for req in extras["image"])
    assert any(req.startswith("onnxruntime") for req in extras["parity"])


# ---------------------------------------------------------------- the block names the README uses
@pytest.fixture(scope="module")
def small_mnv2():
    from edgerun import zoo
    return zoo.mobilenet_v2(width=0.35, resolution=96, batch=1)


def _blocks(sess):
    return {step.name: (step.t, step.band_rows) for step in sess.plan.steps if step.kind == "InvertedResidual"}


def test_a_block_is_named_by_its_plan_name_or_a_prefix_naming_it_alone(small_mnv2):
    full = "features.2.conv.1.0/Conv/InvertedResidual"
    by_full = edgerun.InferenceSession(small_mnv2, kernels_backend="numpy", schedule={full: (3, 4)})
    for short in ("features.2", "features.2.conv", "features.2.conv.1.0"):
        by_short = edgerun.InferenceSession(small_mnv2, kernels_backend="numpy", schedule={short: (3, 4)})
        assert _blocks(by_short)[full] == (3, 4)
        assert _blocks(by_short) == _blocks(by_full)
    x = np.random.default_rng(2).standard_normal((1, 3, 96, 96)).astype(np.float32)
    plain = edgerun.InferenceSession(small_mnv2, kernels_backend="numpy").run(None, {"input": x})[0]
    forced = by_full.run(None, {"input": x})[0]
    assert np.max(np.abs(forced - plain)) <= 1e-5 * max(1.0, float(np.max(np.abs(plain))))


def test_features_1_does_not_also_mean_features_10(small_mnv2):
    sess = edgerun.InferenceSession(small_mnv2, kernels_backend="numpy", schedule={"features.1": 2})
    assert _blocks(sess)["features.1.conv.0.0/Conv/InvertedResidual"][0] == 2
    assert _blocks(sess)["features.10.conv.1.0/Conv/InvertedResidual"][0] == 1


@pytest.mark.parametrize("schedule, words", [
    ({"features": 2}, ["ambiguous", "features.1.conv.0.0/Conv/InvertedResidual", "features.16"]),
    ({"features.99": 2}, ["features.99", "not inverted-residual blocks", "features.2.conv.1.0/Conv/InvertedResidual"]),
    ({"features.2.co": 2}, ["features.2.co", "not inverted-residual blocks"]),
    ({"features.2": 2, "features.2.conv.1.0/Conv/InvertedResidual": 3}, ["one block twice"]),
])
def test_ambiguous_unknown_or_repeated_names_are_refused_listing_the_blocks(small_mnv2, schedule, words):
    with pytest.raises(InvalidOptionError) as info:
        edgerun.InferenceSession(small_mnv2, kernels_backend="numpy", schedule=schedule)
    for word in words:
        assert word in str(info.value)
