"""Write the edgerun zoo models to .onnx files in a folder.

    python tools/export_models.py OUTDIR                      # the default set
    python tools/export_models.py OUTDIR --only mobilenet_v2_1.0_224_pretrained
    python tools/export_models.py OUTDIR --grid              # + MobileNetV2 widths x resolutions
    python tools/export_models.py --list

Each file is named after its configuration; a manifest.json beside them lists the file, the
builder and its arguments, parameter count and multiply-adds of each model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx

from edgerun.zoo import BUILDERS, count_macs, count_parameters

PAPER_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.4)
PAPER_RESOLUTIONS = (96, 128, 160, 192, 224)


def default_models() -> dict[str, tuple[str, dict]]:
    """file stem -> (builder name, keyword arguments)."""
    return {
        "mobilenet_v2_1.0_224_pretrained": ("mobilenet_v2", {"pretrained": True}),
        "mobilenet_v2_1.0_224": ("mobilenet_v2", {}),
        "mobilenet_v2_0.35_96": ("mobilenet_v2", {"width": 0.35, "resolution": 96}),
        "mobilenet_v1_1.0_224": ("mobilenet_v1", {}),
        "shufflenet_v1_g3_2.0x_224": ("shufflenet_v1", {"groups": 3, "width": 2.0}),
        "mobilenet_v3_small_like_224": ("mobilenet_v3_small_like", {}),
    }


def grid_models() -> dict[str, tuple[str, dict]]:
    """MobileNetV2 over the paper's widths and resolutions (random weights)."""
    return {f"mobilenet_v2_{float(w)}_{r}": ("mobilenet_v2", {"width": w, "resolution": r})
            for w in PAPER_WIDTHS for r in PAPER_RESOLUTIONS}


def export(out_dir: Path, models: dict[str, tuple[str, dict]], batch="batch") -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = []
    for stem, (builder, kwargs) in models.items():
        model = BUILDERS[builder](**kwargs, batch=batch)
        path = out_dir / f"{stem}.onnx"
        onnx.save_model(model, str(path))
        manifest.append({"file": path.name, "builder": builder, "kwargs": kwargs,
                         "parameters": count_parameters(model), "macs": count_macs(model)})
        print(f"{path}  {manifest[-1]['parameters'] / 1e6:.2f}M params  {manifest[-1]['macs'] / 1e6:.1f}M MACs")
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _batch(text: str):
    return int(text) if text.isdigit() else text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write the edgerun zoo models to .onnx files.")
    parser.add_argument("out_dir", nargs="?", type=Path, help="folder to write into (created if missing)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="export only these models (see --list)")
    parser.add_argument("--grid", action="store_true", help="also MobileNetV2 over widths x resolutions")
    parser.add_argument("--batch", type=_batch, default="batch",
                        help="batch dimension: a symbolic name (default 'batch') or a fixed size")
    parser.add_argument("--list", action="store_true", help="print the model names and exit")
    args = parser.parse_args(argv)

    available = {**default_models(), **grid_models()}
    if args.list:
        print("\n".join(available))
        return 0
    if args.out_dir is None:
        parser.error("out_dir is required (or use --list)")
    if args.only:
        unknown = [name for name in args.only if name not in available]
        if unknown:
            parser.error(f"unknown model(s) {', '.join(unknown)}; --list shows the names")
        chosen = {name: available[name] for name in args.only}
    else:
        chosen = {**default_models(), **(grid_models() if args.grid else {})}
    export(args.out_dir, chosen, batch=args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
