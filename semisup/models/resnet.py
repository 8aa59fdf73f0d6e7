"""ResNets as CAM classifiers: torchvision's (parameter names ``conv1``, ``bn1``, ``layer1``..``layer4``,
``fc``, so torchvision, SwAV and DeepCluster-v2 checkpoints load without renaming) and the demo's tiny one."""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock

from semisup.models.base import CamBackbone, register_backbone

# The ResNets CamResNet builds (semisup/config.py's _ARCHS lists the same; a test checks the two agree).
RESNET_ARCHS = ("resnet_tiny", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
                "wide_resnet101_2", "resnext50_32x4d", "resnext101_32x8d")



@register_backbone(*RESNET_ARCHS)
class CamResNet(CamBackbone):
    """ResNet trunk + global average pool + linear head; the features are ``layer4``'s."""

    def __init__(self, arch: str, num_classes: int):
        super().__init__()
        net = (_tiny_resnet(num_classes) if arch == "resnet_tiny"
               else torchvision.models.get_model(arch, weights=None, num_classes=num_classes))
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "fc"):
            setattr(self, name, getattr(net, name))
        self.arch = arch

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, C, H/stride, W/stride]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))



def _tiny_resnet(num_classes: int) -> nn.Module:
    """A four-stage BasicBlock ResNet, widths 16-128, total stride 16 (demo scale: a 64 px
    image gives a 4 x 4 last block). Same module names as torchvision's ResNet."""
    net = nn.Module()
    widths = (16, 32, 64, 128)
    net.conv1 = nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False)
    net.bn1 = nn.BatchNorm2d(widths[0])
    net.relu = nn.ReLU(inplace=True)
    net.maxpool = nn.Identity()
    in_ch = widths[0]
    for i, (width, stride) in enumerate(zip(widths, (1, 2, 2, 2)), start=1):
        down = None
        if stride != 1 or in_ch != width:
            down = nn.Sequential(nn.Conv2d(in_ch, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
        setattr(net, f"layer{i}", nn.Sequential(BasicBlock(in_ch, width, stride, down)))
        in_ch = width
    net.fc = nn.Linear(in_ch, num_classes)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net
