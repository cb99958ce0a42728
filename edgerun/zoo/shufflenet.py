"""ShuffleNet v1 (Zhang et al. 2017, Table 1) with pointwise group convolutions and channel shuffle.

Stage output channels for g = 1, 2, 3, 4, 8 come from the paper's Table 1 and are multiplied by
the scale s ("ShuffleNet s x"). The paper says s scales "the number of filters" but its Table 1
only shows the 1x stem (24 channels). We take the stem widths of the authors' released code
(12, 24, 24, 48 for 0.5x, 1x, 1.5x, 2x): with 48 for 2x, g=3 the model has 5.45M parameters and
524.0M multiply-adds, the paper's 524 MFLOPs (a 24-channel stem would give about 507M).
"""
from __future__ import annotations

import numpy as np

from edgerun.zoo.graph import GraphBuilder, RandomParameters, check_batch, check_resolution

STAGE_CHANNELS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960),
                  4: (272, 544, 1088), 8: (384, 768, 1536)}
STAGE_REPEATS = (4, 8, 4)  # units per stage: the first has stride 2
STEM_CHANNELS = {0.5: 12, 1.0: 24, 1.5: 24, 2.0: 48}  # by scale s
BOTTLENECK_RATIO = 4


def _channel_shuffle(g, x, prefix, channels, groups, size):
    """Reshape (N, g, C/g, H, W) -> Transpose(0, 2, 1, 3, 4) -> Reshape (N, C, H, W)."""
    split = g.add_initializer(f"{prefix}.split_shape",
                              np.array([0, groups, channels // groups, size, size], dtype=np.int64))
    merged = g.add_initializer(f"{prefix}.merge_shape", np.array([0, channels, size, size], dtype=np.int64))
    y = g.node("Reshape", [x, split], f"{prefix}/split")
    y = g.node("Transpose", [y], prefix, perm=[0, 2, 1, 3, 4])
    return g.node("Reshape", [y, merged], f"{prefix}/merge")


def _conv_bn(g, x, prefix, cin, cout, kernel, stride=1, group=1, gain=2.0 ** 0.5):
    y = g.conv(x, f"{prefix}.conv", cin, cout, kernel, stride, group, gain=gain)
    return g.batchnorm(y, f"{prefix}.bn", cout)


def _maxpool(g, x, scope):
    return g.node("MaxPool", [x], scope, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])


def _shuffle_unit(g, x, prefix, cin, cout, stride, groups, first_group, size):
    """Figure 2 (b) (stride 1, Add) and (c) (stride 2, 3x3 avg pool + Concat); `size` is the
    spatial size after the unit. The shortcut's average pool counts the zero padding, as torch's
    AvgPool2d does by default; the ReLU after the Concat only needs to act on the branch because
    the pooled shortcut is already non-negative."""
    branch = cout - cin if stride == 2 else cout
    mid = cout // BOTTLENECK_RATIO
    y = _conv_bn(g, x, f"{prefix}.gconv1", cin, mid, 1, group=1 if first_group else groups)
    y = g.relu(y, f"{prefix}.gconv1.relu")
    if groups > 1:
        y = _channel_shuffle(g, y, f"{prefix}.shuffle", mid, groups, size * stride)
    y = _conv_bn(g, y, f"{prefix}.dwconv", mid, mid, 3, stride, group=mid, gain=1.0)
    y = _conv_bn(g, y, f"{prefix}.gconv2", mid, branch, 1, group=groups, gain=0.5)
    if stride == 1:
        return g.relu(g.add(x, y, prefix), f"{prefix}.relu")
    shortcut = g.node("AveragePool", [x], f"{prefix}.shortcut", kernel_shape=[3, 3], strides=[2, 2],
                      pads=[1, 1, 1, 1], count_include_pad=1)
    y = g.relu(y, f"{prefix}.relu")
    return g.node("Concat", [shortcut, y], prefix, axis=1)


def shufflenet_v1(groups=3, width=2.0, resolution=224, seed=0, batch="batch"):
    """ShuffleNet v1 with `groups` pointwise groups, scale `width` (0.5, 1, 1.5, 2), random weights."""
    if groups not in STAGE_CHANNELS:
        raise ValueError(f"groups must be one of {sorted(STAGE_CHANNELS)}, got {groups!r}")
    if width not in STEM_CHANNELS:
        raise ValueError(f"width must be one of {sorted(STEM_CHANNELS)}, got {width!r}")
    resolution = check_resolution(resolution)
    if resolution % 32:
        raise ValueError(f"resolution must be a multiple of 32 for ShuffleNet, got {resolution}")
    batch = check_batch(batch)
    g = GraphBuilder(RandomParameters(seed))
    channels = STEM_CHANNELS[width]
    x = g.relu(_conv_bn(g, "input", "conv1", 3, channels, 3, stride=2), "conv1.relu")
    x = _maxpool(g, x, "maxpool")
    size = resolution // 4
    for stage, (repeats, stage_out) in enumerate(zip(STAGE_REPEATS, STAGE_CHANNELS[groups]), start=2):
        cout = int(stage_out * width)
        if (cout // BOTTLENECK_RATIO) % groups:
            raise ValueError(f"width {width} gives {cout} channels in stage {stage}, not divisible "
                             f"into {groups} groups of bottleneck channels")
        for unit in range(repeats):
            stride = 2 if unit == 0 else 1
            size = size // stride
            x = _shuffle_unit(g, x, f"stage{stage}.{unit}", channels, cout, stride, groups,
                              first_group=(stage == 2 and unit == 0), size=size)
            channels = cout
    x = g.global_pool_flatten(x, "pool")
    g.linear(x, "fc", channels, 1000)
    return g.model(f"shufflenet_v1_g{groups}_{width:g}x_{resolution}_seed{seed}", 3, resolution, batch)
