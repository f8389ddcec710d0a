"""HDMNet, the PSPNet base learner and their backbones."""

from hdmnet.model.backbone import build_backbone, load_imagenet_weights
from hdmnet.model.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from hdmnet.model.hdmnet import Features, HDMNet, HDMNetOutput, build_hdmnet
from hdmnet.model.pspnet import PSPNet, build_pspnet
from hdmnet.model.weights import CheckpointError

__all__ = [
    "CheckpointError",
    "Features",
    "HDMNet",
    "HDMNetOutput",
    "PSPNet",
    "build_backbone",
    "build_hdmnet",
    "build_pspnet",
    "check_compatible",
    "load_checkpoint",
    "load_imagenet_weights",
    "save_checkpoint",
]
