"""The application layer: the `edgerun` command and the tools it runs.

Owns the command line (`main`: run, profile, plan), the subcommands table3 (the paper's Table 3),
bench (against onnxruntime), calibrate (fits the scheduler's cost model on this machine), compile
(writes a bundle) and the profile plot. Everything here may import the runtime (edgerun.session,
edgerun.bundle, edgerun.models, scheduler, ...); nothing in the runtime imports this package
(tests/test_layers.py checks both). It is named `cli` so that the console script
`edgerun = edgerun.cli:main` and `from edgerun.cli import main` keep working.
"""
from edgerun.cli.main import EXTERNAL_COMMANDS, main, top_k
from edgerun.models import resolve_model

__all__ = ["EXTERNAL_COMMANDS", "main", "resolve_model", "top_k"]
