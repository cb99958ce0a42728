"""edgerun.kernels._native: the native kernels' extension module for this CPU.

Importing this replaces it (in sys.modules) with the instruction-set variant edgerun.kernels.isa
chooses, edgerun.kernels._native_<isa>; its ISA attribute names the variant.
"""
import sys

from edgerun.kernels.isa import load_variant

sys.modules[__name__] = load_variant()
