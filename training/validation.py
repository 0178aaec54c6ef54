"""Set5 validation during training: the evaluation protocol of ``drrn eval`` on a full image in PyTorch."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from model_export.model import DRRN
from training.paths import resolve
from training.recipe import Recipe


def validate(model: DRRN, recipe: Recipe, device: str) -> dict:
    """Set5 PSNR/SSIM at every training scale, full-image fp32 inference, under the eval protocol."""
    from evaluation.core import evaluate

    def sr(bicubic: np.ndarray, _scale: int) -> np.ndarray:
        x = torch.from_numpy(bicubic.astype(np.float32))[None, None].to(device)
        with torch.no_grad():
            return model(x)[0, 0].float().cpu().numpy()

    folder = resolve(recipe.data.val_folder)
    if not folder.is_dir():
        tqdm.write(f"validation skipped: {folder} not found")
        return {}
    was_training = model.training
    model.eval()
    try:
        res = evaluate([folder], recipe.data.scales, sr, progress=False)
    finally:
        model.train(was_training)
    per_scale = next(iter(res.values()))
    return {s: {"psnr": round(r["psnr"], 4), "ssim": round(r["ssim"], 5)} for s, r in per_scale.items()}
