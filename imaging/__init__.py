"""Torch-free imaging primitives for DRRN: MATLAB-compatible colour conversion, bicubic resize, crops
and metrics (numpy only), plus the evaluation protocol in :mod:`imaging.protocol` (numpy + Pillow).

Only the numpy-only helpers are re-exported here, so ``import imaging`` stays cheap and does not pull in
Pillow; import :mod:`imaging.protocol` explicitly for image loading and scoring.
"""

from imaging.color import rgb_to_ycbcr, ycbcr_to_rgb
from imaging.crop import modcrop, shave
from imaging.metrics import psnr, ssim
from imaging.resize import imresize, resize_weights

__all__ = ["imresize", "modcrop", "psnr", "resize_weights", "rgb_to_ycbcr", "shave", "ssim", "ycbcr_to_rgb"]
