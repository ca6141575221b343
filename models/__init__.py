"""Models: the DeepLab-ResNet34 backbone, ASPP heads and the multitask network."""
from .aspp_head import ASPPHead
from .multitask import SHARED, MultiTaskNet, build_model, owner_of
from .resnet_backbone import DeepLabResNet34

__all__ = ["ASPPHead", "DeepLabResNet34", "MultiTaskNet", "SHARED", "build_model", "owner_of"]
