"""Models: the DeepLab-ResNet34 backbone, ASPP heads and the multitask network."""
from .architecture import Architecture, architecture_of, check_architecture, default_architecture
from .aspp_head import ASPPHead
from .multitask import MultiTaskNet, build_model
from .resnet_backbone import DeepLabResNet34

__all__ = ["ASPPHead", "Architecture", "DeepLabResNet34", "MultiTaskNet", "architecture_of", "build_model",
           "check_architecture", "default_architecture"]
