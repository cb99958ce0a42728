"""MobileNetV2 1.0/224 block geometries the scheduler tests work by hand."""
from scheduler import BlockGeometry

# The block 16 -> 96 -> 24 at 112x112, depthwise stride 2.
EXPAND_S2 = BlockGeometry(16, 112, 112, 96, 1, 1, (0, 0, 0, 0), 3, 2, (1, 1, 1, 1), 24, False)
# The first block (t=1, no expansion): 32 -> dw -> 16 at 112x112.
NO_EXPAND = BlockGeometry(32, 112, 112, 32, 0, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 16, False)
# The first block with the 3x3/2 stem conv fused in as the "expansion": 3 -> 32 at 224 -> 112.
STEM_FUSED = BlockGeometry(3, 224, 224, 32, 3, 2, (1, 1, 1, 1), 3, 1, (1, 1, 1, 1), 16, False)
# A residual block 24 -> 144 -> 24 at 56x56.
RESIDUAL = BlockGeometry(24, 56, 56, 144, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 24, True)
