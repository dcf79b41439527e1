"""ResNet-18 for the benchmarks: torchvision's model when torchvision loads, else a replica.

The replica has torchvision's layer shapes exactly (He et al. 2016, as torchvision builds it):
a 7x7 stride-2 stem convolution with 64 channels, BatchNorm, ReLU, a 3x3 stride-2 max-pool;
four stages of two BasicBlocks (64, 128, 256, 512 channels; stages 2-4 start with stride 2 and a
1x1 convolution + BatchNorm on the skip path); global average pool; a linear head. Convolutions
have no bias. 20 Conv2d and 1 Linear layer, 11.7 M parameters at 1000 classes.
"""

from __future__ import annotations

import functools

import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x)); skip = 1x1 conv + bn when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                           if stride != 1 or c_in != c_out else None)

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + skip)


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, c_in = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


@functools.lru_cache(maxsize=None)
def _torchvision_resnet18():
    """torchvision's resnet18 constructor, or None (looked up once: a failed import is retried
    by Python on every attempt)."""
    try:
        from torchvision.models import resnet18 as tv_resnet18
    except Exception:  # not installed, or a build that does not load with this torch
        return None
    return tv_resnet18


def source() -> str:
    """Where :func:`resnet18` takes its model from."""
    return "torchvision" if _torchvision_resnet18() else "replica of torchvision's resnet18"


def resnet18(classes: int = 1000) -> tuple[nn.Module, str]:
    """(model with random weights, where it came from)."""
    tv_resnet18 = _torchvision_resnet18()
    model = tv_resnet18(weights=None, num_classes=classes) if tv_resnet18 else ResNet18(classes)
    return model, source()
