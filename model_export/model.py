"""The DRRN model family (Tai et al., CVPR 2017) as a plain ``nn.Module`` with a config dataclass.

One class covers the paper's whole family:

- ``blocks`` (B) recursive blocks, each with ``units`` (U) residual units; U = 0 is VDSR.
- ``share_weights=False`` gives DRRN_NS (no recursion), ``multi_path=False`` gives DRRN_C (chained skip).
- ``batch_norm=True`` gives the authors' released form: BN + affine before every ReLU, and a BN in front of
  the first conv. BN layers are never shared across recursions; only conv weights are.
- ``rectified_skips=True`` gives the variant that networks applying ReLU *in place* actually compute (the
  public B1U25 weights, ``model_export.mxnet_import``): every skip connection carries the ReLU'd tensor.
  The first conv and the global residual read ReLU(x), and each unit adds back ReLU(h0) (chained: the
  ReLU of the previous unit's output). Without BN only; it changes nothing where x >= 0 and h0 >= 0.

Every conv is pre-activated (``[BN] -> ReLU -> conv``) except the first one, which reads the input directly
(``[BN] -> conv``). That keeps U = 0 bit-compatible with VDSR's conv-ReLU ordering even when the bicubic
input overshoots [0, 1].

Tensors: input and output are ``float32[N, 1, H, W]``, the bicubic-upscaled luminance in [0, 1]
(values slightly outside [0, 1] are legal: bicubic overshoots). Output = input + net(input).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DRRNConfig:
    """Architecture hyper-parameters; the JSON form is stored in weight files and ONNX metadata."""

    blocks: int = 1
    units: int = 9
    channels: int = 128
    batch_norm: bool = False
    bias: bool = False
    share_weights: bool = True
    multi_path: bool = True
    rectified_skips: bool = False

    def __post_init__(self) -> None:
        if self.blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {self.blocks}")
        if self.units < 0:
            raise ValueError(f"units must be >= 0, got {self.units}")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if self.rectified_skips and self.batch_norm:
            raise ValueError("rectified_skips models in-place ReLU networks, which have no BN")

    @property
    def depth(self) -> int:
        """Number of conv layers on the longest path: (1 + 2U)·B + 1."""
        return (1 + 2 * self.units) * self.blocks + 1

    @property
    def receptive_field(self) -> int:
        """Side of the square input window that one output pixel sees: 2·depth + 1."""
        return 2 * self.depth + 1

    @property
    def name(self) -> str:
        suffix = ("" if self.share_weights else "_NS") + ("" if self.multi_path else "_C")
        suffix += "_RS" if self.rectified_skips else ""
        return f"DRRN_B{self.blocks}U{self.units}{suffix}_C{self.channels}" + (
            "_BN" if self.batch_norm else ""
        )

    def flops_per_pixel(self) -> int:
        """Multiply-adds x2 per output pixel at inference (convs only; BN folds away)."""
        c = self.channels
        macs = 9 * (c + (self.blocks - 1) * c * c + self.blocks * self.units * 2 * c * c + c)
        return 2 * macs

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> DRRNConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown DRRN config fields: {sorted(unknown)}")
        return cls(**data)


def _conv(cin: int, cout: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=bias)


def _norms(count: int, channels: int, enabled: bool) -> nn.ModuleList:
    return nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(count) if enabled)


class RecursiveBlock(nn.Module):
    """One recursive block: an entry conv giving h0, then U residual units.

    Unit u computes ``h = conv_b(act_b(conv_a(act_a(h)))) + skip`` where ``skip`` is h0 (multi-path) or the
    previous unit's output (chained), and ``act`` is ``[BN] -> ReLU``.
    """

    def __init__(self, cfg: DRRNConfig, in_channels: int, first: bool) -> None:
        super().__init__()
        c, u = cfg.channels, cfg.units
        self.first = first
        self.units = u
        self.multi_path = cfg.multi_path
        self.rectified_skips = cfg.rectified_skips
        self.entry_norm = _norms(1, in_channels, cfg.batch_norm)
        self.entry = _conv(in_channels, c, cfg.bias)
        n_convs = min(u, 1) if cfg.share_weights else u
        self.conv_a = nn.ModuleList(_conv(c, c, cfg.bias) for _ in range(n_convs))
        self.conv_b = nn.ModuleList(_conv(c, c, cfg.bias) for _ in range(n_convs))
        # BN statistics differ per recursion depth, so BN is per unit even when convs are shared.
        self.norm_a = _norms(u, c, cfg.batch_norm)
        self.norm_b = _norms(u, c, cfg.batch_norm)

    def _act(self, norms: nn.ModuleList, i: int, x: torch.Tensor, relu: bool = True) -> torch.Tensor:
        if len(norms):
            x = norms[i](x)
        return torch.relu(x) if relu else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The very first conv reads the image directly, as VDSR's does.
        h0 = self.entry(self._act(self.entry_norm, 0, x, relu=not self.first))
        if self.rectified_skips:
            h0 = torch.relu(h0)
        h = h0
        for u in range(self.units):
            k = u if len(self.conv_a) > 1 else 0
            r = self.conv_a[k](self._act(self.norm_a, u, h))
            r = self.conv_b[k](self._act(self.norm_b, u, r))
            skip = h0 if self.multi_path else (torch.relu(h) if self.rectified_skips else h)
            h = r + skip
        return h


class DRRN(nn.Module):
    """DRRN super-resolution network. ``forward(x: float32[N,1,H,W]) -> float32[N,1,H,W]``."""

    def __init__(self, cfg: DRRNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        blocks = []
        for b in range(cfg.blocks):
            blocks.append(RecursiveBlock(cfg, 1 if b == 0 else cfg.channels, first=b == 0))
        self.blocks = nn.ModuleList(blocks)
        self.output_norm = _norms(1, cfg.channels, cfg.batch_norm)
        self.output = _conv(cfg.channels, 1, cfg.bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MSRA / He-normal init (fan-in, ReLU gain), zero biases, identity BN, as in the paper."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.rectified_skips:
            x = torch.relu(x)
        h = x
        for block in self.blocks:
            h = block(h)
        if len(self.output_norm):
            h = self.output_norm[0](h)
        return x + self.output(torch.relu(h))


def count_params(model: nn.Module) -> int:
    """Trainable parameters, shared convs counted once (conv weights, biases and BN affine)."""
    return sum(p.numel() for p in model.parameters())


def expected_params(cfg: DRRNConfig) -> int:
    """Closed-form parameter count, used to cross-check the module and by ``model-info`` docs."""
    c, b, u = cfg.channels, cfg.blocks, cfg.units
    convs = cfg.blocks + 1 + (b * u * 2 if not cfg.share_weights else b * min(u, 1) * 2)
    weights = 9 * (c + (b - 1) * c * c + c) + (convs - b - 1) * 9 * c * c
    biases = (b * c + 1 + (convs - b - 1) * c) if cfg.bias else 0
    bn = 2 * (1 + (b - 1) * c + b * u * 2 * c + c) if cfg.batch_norm else 0
    return weights + biases + bn
