"""The inference form of a DRRN: BatchNorm folded away, for export.

In eval mode a BN layer is a per-channel affine map ``s·x + t``. DRRN is pre-activated
(``BN -> ReLU -> conv``), so a BN can be folded into a conv only when a conv *directly precedes* it:
that is the BN between ``conv_a`` and ``conv_b`` of every unit, which becomes the bias and scale of that
unit's ``conv_a``. Because BN is per recursion while ``conv_a`` is shared, folding gives each recursion its
own folded copy of ``conv_a``. The other BNs sit on a residual *sum* (block entries, unit inputs, the
output) or on the image itself, where no single conv can absorb them; they become one per-channel
multiply-add, the cheapest exact form. Without BN the folded model is the original one, shared weights and
all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model_export.model import DRRN


class _Affine(nn.Module):
    """Eval-mode BatchNorm as ``x * scale + shift`` (``float32[1, C, 1, 1]`` each)."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        scale, shift = _bn_scale_shift(bn)
        self.register_buffer("scale", scale.view(1, -1, 1, 1))
        self.register_buffer("shift", shift.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class _Conv3x3(nn.Module):
    """A 3x3, padding-1 conv whose weight and bias already include any folded BN."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=1)


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    # float64 keeps the fold itself from adding error on top of the float32 model's own.
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    gamma = bn.weight.double() if bn.affine else torch.ones_like(var)
    beta = bn.bias.double() if bn.affine else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale.float(), (beta - mean * scale).float()


def _fold_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> _Conv3x3:
    if bn is None:
        return _Conv3x3(conv.weight, conv.bias)
    scale, shift = _bn_scale_shift(bn)
    weight = (conv.weight.double() * scale.double().view(-1, 1, 1, 1)).float()
    bias = shift if conv.bias is None else (conv.bias.double() * scale.double() + shift.double()).float()
    return _Conv3x3(weight, bias)


def _affine(norms: nn.ModuleList, i: int) -> nn.Module:
    return _Affine(norms[i]) if len(norms) else nn.Identity()


class _FoldedBlock(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.first = block.first
        self.multi_path = block.multi_path
        self.rectified_skips = block.rectified_skips
        self.entry_affine = _affine(block.entry_norm, 0)
        self.entry = _fold_conv(block.entry, None)
        self.affine_a = nn.ModuleList()
        self.conv_a = nn.ModuleList()
        self.conv_b = nn.ModuleList()
        shared: dict[int, _Conv3x3] = {}
        for u in range(block.units):
            k = u if len(block.conv_a) > 1 else 0
            self.affine_a.append(_affine(block.norm_a, u))
            if len(block.norm_b):
                self.conv_a.append(_fold_conv(block.conv_a[k], block.norm_b[u]))
            else:
                # Reuse one module per shared conv so the exported graph keeps a single initializer.
                self.conv_a.append(shared.setdefault(id(block.conv_a[k]), _fold_conv(block.conv_a[k], None)))
            self.conv_b.append(shared.setdefault(id(block.conv_b[k]), _fold_conv(block.conv_b[k], None)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry_affine(x)
        h0 = self.entry(x if self.first else torch.relu(x))
        if self.rectified_skips:
            h0 = torch.relu(h0)
        h = h0
        for affine_a, conv_a, conv_b in zip(self.affine_a, self.conv_a, self.conv_b, strict=True):
            r = conv_b(torch.relu(conv_a(torch.relu(affine_a(h)))))
            skip = h0 if self.multi_path else (torch.relu(h) if self.rectified_skips else h)
            h = r + skip
        return h


class FoldedDRRN(nn.Module):
    """Inference-only DRRN with BN folded; same function as ``model.eval()``.

    ``forward(x: float32[N,1,H,W]) -> float32[N,1,H,W]``, global residual included.
    """

    def __init__(self, model: DRRN) -> None:
        super().__init__()
        model = model.eval()
        self.cfg = model.cfg
        self.blocks = nn.ModuleList(_FoldedBlock(b) for b in model.blocks)
        self.output_affine = _affine(model.output_norm, 0)
        self.output = _fold_conv(model.output, None)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for block in self.blocks:
            h = block(h)
        return self.output(torch.relu(self.output_affine(h)))

    def rectify_input(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU(x) for ``rectified_skips`` models (the first conv and the global residual read it)."""
        return torch.relu(x) if self.cfg.rectified_skips else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.rectify_input(x)
        return x + self.residual(x)


class Float16IO32(nn.Module):
    """Runs the residual branch in float16 with float32 input and output.

    The global residual ``x + r`` is added in float32: float16 has only ~5e-4 resolution near 1.0, which
    would otherwise eat a quarter of the fp16 error budget on the identity path alone.
    """

    def __init__(self, net: FoldedDRRN) -> None:
        super().__init__()
        self.net = net.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net.rectify_input(x)
        return x + self.net.residual(x.half()).float()
