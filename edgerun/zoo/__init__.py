"""edgerun.zoo: model builders (ONNX graphs as an exporter emits them, before optimisation),
a torch-free reader for PyTorch .pth state dicts, ImageNet labels, a sample photo and preprocessing.

Builders return an onnx.ModelProto with input "input" float32 [batch, 3, R, R] and output
"logits" [batch, 1000]:

- mobilenet_v2(width=1.0, resolution=224, pretrained=False, seed=0, batch="batch")
- mobilenet_v1(width=1.0, resolution=224, seed=0, batch="batch")
- shufflenet_v1(groups=3, width=2.0, resolution=224, seed=0, batch="batch")
- mobilenet_v3_small_like(resolution=224, seed=0, batch="batch")   (opset 14: HardSwish)

and the paper's two other systems, with other outputs (see their modules):

- ssdlite_mobilenet_v2(resolution=320, seed=0, batch="batch")  -> "boxes", "scores" (Section 6.2)
- mobile_deeplabv3(resolution=513, seed=0, batch="batch")      -> "logits" at output stride 16 (Section 6.3)
"""
from edgerun.zoo.images import imagenet_labels, preprocess_imagenet, sample_image
from edgerun.zoo.deeplab import mobile_deeplabv3
from edgerun.zoo.mobilenet_v1 import mobilenet_v1
from edgerun.zoo.mobilenet_v2 import mobilenet_v2, pretrained_weights_path
from edgerun.zoo.mobilenet_v3 import mobilenet_v3_small_like
from edgerun.zoo.pth import load_state_dict
from edgerun.zoo.shufflenet import shufflenet_v1
from edgerun.zoo.ssdlite import ssdlite_mobilenet_v2
from edgerun.zoo.stats import count_macs, count_parameters

# name -> builder taking keyword arguments; used by tools/export_models.py and the tests.
BUILDERS = {
    "mobile_deeplabv3": mobile_deeplabv3,
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_small_like": mobilenet_v3_small_like,
    "shufflenet_v1": shufflenet_v1,
    "ssdlite_mobilenet_v2": ssdlite_mobilenet_v2,
}

__all__ = ["BUILDERS", "count_macs", "count_parameters", "imagenet_labels", "load_state_dict",
           "mobile_deeplabv3", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small_like", "preprocess_imagenet",
           "pretrained_weights_path", "sample_image", "shufflenet_v1", "ssdlite_mobilenet_v2"]
