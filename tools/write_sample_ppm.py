"""Write the zoo's sample photo (Chelsea the cat, 224x224 RGB) as a binary PPM for examples/classify.c.

    python tools/write_sample_ppm.py chelsea.ppm
"""
from __future__ import annotations

import sys
from pathlib import Path

from edgerun.zoo.images import sample_image


def write_ppm(path, image) -> None:
    """An (H, W, 3) uint8 RGB array as a binary PPM (P6, maxval 255)."""
    height, width, _ = image.shape
    Path(path).write_bytes(f"P6\n{width} {height}\n255\n".encode("ascii") + image.tobytes())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python tools/write_sample_ppm.py OUT.ppm", file=sys.stderr)
        return 2
    write_ppm(argv[0], sample_image())
    return 0


if __name__ == "__main__":
    sys.exit(main())
