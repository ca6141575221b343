"""Models: the DeepLab-ResNet34 backbone, ASPP heads and the multitask network."""
from .aspp_head import ASPPHead
from .multitask import MultiTaskNet, build_model
from .resnet_backbone import DeepLabResNet34

__all__ = ["ASPPHead", "DeepLabResNet34", "MultiTaskNet", "build_model"]
