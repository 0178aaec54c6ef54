"""The DRRN module family and ``drrn model-info``: parameter counts from the paper, depth, receptive field."""

from __future__ import annotations

import json

import pytest
import torch

from drrn.cli import main
from model_export.model import DRRN, DRRNConfig, count_params, expected_params

# (B, U, params with C=128 and no bias, depth) from the paper / shared/DRRN.md.
PAPER = [
    (1, 9, 297_216, 20),
    (1, 25, 297_216, 52),
    (3, 8, 1_181_952, 52),
    (3, 2, 1_181_952, 16),
    (17, 1, 7_375_104, 52),
]


@pytest.mark.parametrize(("blocks", "units", "params", "depth"), PAPER)
def test_model_info_matches_paper(blocks, units, params, depth, capsys) -> None:
    assert (
        main(["model-info", "--blocks", str(blocks), "--units", str(units), "--channels", "128", "--json"])
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == params
    assert info["depth"] == depth
    assert info["receptive_field"] == 2 * depth + 1


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--batch-norm"],
        ["--bias"],
        ["--no-share"],
        ["--chained"],
        ["--batch-norm", "--bias", "--no-share", "--chained"],
    ],
)
def test_param_count_counts_bias_and_bn(flags, capsys) -> None:
    main(["model-info", "-B", "2", "-U", "3", "-C", "16", "--json", *flags])
    info = json.loads(capsys.readouterr().out)
    cfg = DRRNConfig(
        blocks=2,
        units=3,
        channels=16,
        batch_norm="--batch-norm" in flags,
        bias="--bias" in flags,
        share_weights="--no-share" not in flags,
        multi_path="--chained" not in flags,
    )
    assert info["params"] == count_params(DRRN(cfg)) == expected_params(cfg)


def test_variants_change_params_as_the_paper_says() -> None:
    shared = count_params(DRRN(DRRNConfig(units=9, channels=16)))
    unshared = count_params(DRRN(DRRNConfig(units=9, channels=16, share_weights=False)))
    assert unshared - shared == 8 * 2 * 9 * 16 * 16  # 8 extra pairs of 3x3 CxC convs
    bn = count_params(DRRN(DRRNConfig(units=9, channels=16, batch_norm=True)))
    # BN affine (scale+shift) on the input, before every unit's two ReLUs (not shared), and before the output.
    assert bn - shared == 2 * (1 + 9 * 2 * 16 + 16)


def test_forward_shape_and_global_residual() -> None:
    torch.manual_seed(0)
    model = DRRN(DRRNConfig(units=2, channels=8)).eval()
    with torch.no_grad():
        model.output.weight.zero_()
        x = torch.rand(2, 1, 17, 23)
        assert torch.equal(model(x), x)  # zero residual branch -> identity


def test_units_zero_is_vdsr_plain_chain() -> None:
    """U=0: B+1 convs, conv-ReLU ordering, identical to a hand-written VDSR forward."""
    torch.manual_seed(0)
    model = DRRN(DRRNConfig(blocks=4, units=0, channels=8)).eval()
    assert model.cfg.depth == 5
    convs = [b.entry.weight for b in model.blocks] + [model.output.weight]
    x = torch.rand(1, 1, 20, 20) - 0.05  # bicubic overshoot below 0 must not be clipped by a ReLU
    h = x
    for w in convs[:-1]:
        h = torch.relu(torch.nn.functional.conv2d(h, w, padding=1))
    ref = x + torch.nn.functional.conv2d(h, convs[-1], padding=1)
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-6)


def test_shared_weights_are_one_tensor() -> None:
    model = DRRN(DRRNConfig(units=5, channels=8))
    assert len(model.blocks[0].conv_a) == 1
    ns = DRRN(DRRNConfig(units=5, channels=8, share_weights=False))
    assert len(ns.blocks[0].conv_a) == 5


def test_chained_differs_from_multi_path() -> None:
    torch.manual_seed(0)
    a = DRRN(DRRNConfig(units=3, channels=8)).eval()
    b = DRRN(DRRNConfig(units=3, channels=8, multi_path=False)).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


def test_msra_init_std() -> None:
    torch.manual_seed(0)
    w = DRRN(DRRNConfig(units=1, channels=128)).blocks[0].conv_a[0].weight
    assert w.std().item() == pytest.approx((2 / (9 * 128)) ** 0.5, rel=0.05)


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="blocks"):
        DRRNConfig(blocks=0)
    with pytest.raises(ValueError, match="unknown"):
        DRRNConfig.from_dict({"blocks": 1, "layers": 3})
