"""Reproduce Table 3 of the MobileNetV2 paper beside edgerun's true planned peaks (edgerun table3)."""
import sys

from edgerun.cli.table3 import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
