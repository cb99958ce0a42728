"""Time edgerun against onnxruntime in one process on the same input (edgerun bench)."""
import sys

from edgerun.cli.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
