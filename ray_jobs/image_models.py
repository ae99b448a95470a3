"""Image classifiers for the CIFAR-10 / Fashion-MNIST runs, and batch norm that spans every DDP worker.

`airbench` follows the shape of Keller Jordan's airbench94 (a stem, three conv groups of conv-pool-BN-GELU-conv-BN-GELU,
global max pool, an unbiased linear head scaled by 1/9), without its fixed whitening layer; `width` scales every
group so one net serves a CPU test (width 16) and a GPU run (width 64, the published size). `resnet18` is the usual
CIFAR variant (3x3 stem, no initial max pool).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

# the differentiable all_reduce is deprecated in favour of a private module; it is still the public, working one
warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_reduce is deprecated", FutureWarning)


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class ConvGroup(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            _conv(c_in, c_out),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(c_out),
            nn.GELU(),
            _conv(c_out, c_out),
            nn.BatchNorm2d(c_out),
            nn.GELU(),
        )


class AirbenchNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        stem, wide = max(8, width // 2), 4 * width
        self.layers = nn.Sequential(
            _conv(in_channels, stem),
            nn.BatchNorm2d(stem),
            nn.GELU(),
            ConvGroup(stem, width),
            ConvGroup(width, wide),
            ConvGroup(wide, wide),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(wide, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x)) / 9.0  # airbench's output scale: softer logits early, faster start


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(c_in, c_out, stride),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            _conv(c_out, c_out),
            nn.BatchNorm2d(c_out),
        )
        self.skip = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet18(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = [_conv(in_channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        c_in = width
        for i, c_out in enumerate(widths):
            layers += [BasicBlock(c_in, c_out, 1 if i == 0 else 2), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))


ARCHS = {"airbench": AirbenchNet, "resnet18": ResNet18}


def build_model(arch: str, in_channels: int, num_classes: int, width: int) -> nn.Module:
    return ARCHS[arch](in_channels, num_classes, width)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the global batch on CPU (gloo), where torch's SyncBatchNorm does not run.

    Per-channel sums travel through the differentiable all_reduce, so both the statistics and their gradients
    cover every worker's rows: N workers at batch B/N compute what one worker computes at batch B.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        count = x.numel() / x.shape[1] * dist.get_world_size()
        mean = dist_fn.all_reduce(x.sum(dims)) / count
        centered = x - mean.view(shape)  # two passes, as torch's own batch norm: no E[x²] - E[x]² cancellation
        var = dist_fn.all_reduce((centered * centered).sum(dims)) / count
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * count / max(count - 1, 1), alpha=m)
            self.num_batches_tracked += 1
        y = centered * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d normalises over the global batch when several workers train one model."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum).to(child.weight.device)
            synced.load_state_dict(child.state_dict())
            setattr(model, name, synced)
        else:
            sync_batchnorm(child, device)
    return model
