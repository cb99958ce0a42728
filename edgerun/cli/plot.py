"""`edgerun profile --plot`: memory over execution steps as a PNG, with the paper's Table 3 level.

Needs matplotlib (the optional extra "plot"); imported only when a plot is asked for.
"""
from __future__ import annotations

from edgerun.errors import EdgerunError, InvalidInputError

# Table 3 of the MobileNetV2 paper: the largest tensor that must be materialised, 16-bit activations,
# for the canonical 224x224 width-1.0 models. (channels, height, width) of that tensor.
TABLE3_LARGEST_TENSOR = {
    "mobilenet_v2": (16, 112, 112),    # "400K"
    "mobilenet_v1": (64, 112, 112),    # "1600K"
    "shufflenet_v1": (400, 28, 28),    # "600K"
}
TABLE3_PAPER_LABEL = {"mobilenet_v2": "400K", "mobilenet_v1": "1600K", "shufflenet_v1": "600K"}
PAPER_ACTIVATION_BYTES = 2     # the paper counts 16-bit activations
EDGERUN_ACTIVATION_BYTES = 4   # edgerun runs float32 activations


class PlotUnavailableError(EdgerunError):
    """matplotlib (the optional extra "plot") is not installed."""


# ---------------------------------------------------------------- Table 3 reference level
# how the zoo names the canonical configuration of each family (graph name = family + tag + ...)
TABLE3_CANONICAL_TAG = {"mobilenet_v2": "_1_224", "mobilenet_v1": "_1_224", "shufflenet_v1": "_g3_2x_224"}


def table3_reference(model_name: str, input_shape) -> dict | None:
    """The paper's Table 3 level for a canonical MobileNet-family model (width 1.0, ShuffleNet g=3 2x,
    224x224 input, as the zoo names them), converted to edgerun's float32 activations; None otherwise.

    The paper counts 16-bit activations (MobileNetV2: 16 x 112 x 112 x 2 B = 401,408 B, "400K"); edgerun's
    planned bytes are float32, so the level drawn is the same tensor at 4 bytes per value (802,816 B) to be
    comparable with the planned and measured curves."""
    if not input_shape or len(input_shape) != 4 or tuple(input_shape[2:]) != (224, 224):
        return None
    for family, (c, h, w) in TABLE3_LARGEST_TENSOR.items():
        if not model_name.startswith(family + TABLE3_CANONICAL_TAG[family]):
            continue
        paper_bytes = c * h * w * PAPER_ACTIVATION_BYTES
        return {
            "family": family,
            "paper_bytes_16bit": paper_bytes,
            "bytes": c * h * w * EDGERUN_ACTIVATION_BYTES,
            "label": f"Table 3 {family} {TABLE3_PAPER_LABEL[family]} @16-bit = "
                     f"{c}x{h}x{w} x 4 B = {c * h * w * EDGERUN_ACTIVATION_BYTES:,} B @fp32",
        }
    return None


# ---------------------------------------------------------------- plot
def require_matplotlib():
    """matplotlib.pyplot with the file-only Agg backend, or PlotUnavailableError."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailableError("--plot needs matplotlib: pip install 'edgerun[plot]'") from None
    return plt


def plot_memory(report: dict, path, title: str = "", budget: int | None = None,
                reference: dict | None = None) -> None:
    """Memory over execution steps: planned and measured live bytes, the budget and a reference level."""
    plt = require_matplotlib()
    rows = report["rows"]
    steps = [row["index"] for row in rows]
    figure, axes = plt.subplots(figsize=(10, 4.5))
    axes.step(steps, [r["planned_bytes"] / 1024 for r in rows], where="mid", label="planned live bytes")
    axes.step(steps, [r["measured_bytes"] / 1024 for r in rows], where="mid", linestyle="--",
              label="measured (planned + escaped)")
    axes.axhline(report["totals"]["planned_peak_bytes"] / 1024, color="grey", linewidth=0.8,
                 label="planned peak (arena)")
    if budget is not None:
        axes.axhline(budget / 1024, color="red", label=f"budget {budget:,} B")
    if reference is not None:
        axes.axhline(reference["bytes"] / 1024, color="green", linestyle=":", label=reference["label"])
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set_xlabel("execution step")
    axes.set_ylabel("KiB")
    axes.set_title(title or "edgerun memory profile")
    axes.legend(fontsize="small")
    figure.tight_layout()
    try:
        figure.savefig(path, format="png")
    except OSError as exc:
        raise InvalidInputError(f"--plot: cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(figure)
