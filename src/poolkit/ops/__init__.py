"""poolkit.ops: the framework-free NumPy reference, forward and backward.

Every operator is ``NAME(x, <other arrays>, **settings)`` with PyTorch's
argument names, N-d over the trailing spatial axes, with ``*1d/2d/3d``
aliases; :func:`vjp` gives ``(outputs, pullback)`` for any of them.
"""

from ._api import vjp
from ._engine import get_num_threads, set_num_threads
from .adaptive import (
    adaptive_avg_pool,
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    adaptive_avg_pool3d,
    adaptive_max_pool,
    adaptive_max_pool1d,
    adaptive_max_pool2d,
    adaptive_max_pool3d,
    global_avg_pool,
    global_max_pool,
)
from .attention import attention_pool, attention_pool1d, attention_pool2d, attention_pool3d
from .avg_pool import avg_pool, avg_pool1d, avg_pool2d, avg_pool3d
from .blur import (
    binomial_filter,
    blur_pool,
    blur_pool1d,
    blur_pool2d,
    blur_pool3d,
    max_blur_pool,
    max_blur_pool1d,
    max_blur_pool2d,
    max_blur_pool3d,
)
from .dpp import dpp_pool, dpp_pool1d, dpp_pool2d, dpp_pool3d
from .fractional import (
    fractional_max_pool,
    fractional_max_pool1d,
    fractional_max_pool2d,
    fractional_max_pool3d,
)
from .gated import gated_pool, gated_pool1d, gated_pool2d, gated_pool3d
from .gem import gem_pool, gem_pool1d, gem_pool2d, gem_pool3d, global_gem_pool
from .lip import lip_pool, lip_pool1d, lip_pool2d, lip_pool3d
from .lp_pool import lp_pool, lp_pool1d, lp_pool2d, lp_pool3d
from .lse import lse_pool, lse_pool1d, lse_pool2d, lse_pool3d
from .masked import masked_pool, masked_pool1d, masked_pool2d, masked_pool3d
from .max_pool import max_pool, max_pool1d, max_pool2d, max_pool3d
from .median import median_pool, median_pool1d, median_pool2d, median_pool3d
from .mixed import mixed_pool, mixed_pool1d, mixed_pool2d, mixed_pool3d
from .multiscale import multiscale_roi_align, multiscale_roi_align2d
from .precise_roi import precise_roi_pool, precise_roi_pool2d
from .ps_roi import ps_roi_align, ps_roi_align2d, ps_roi_pool, ps_roi_pool2d
from .pyramid import (
    spatial_pyramid_pool,
    spatial_pyramid_pool1d,
    spatial_pyramid_pool2d,
    spatial_pyramid_pool3d,
    spp,
    spp1d,
    spp2d,
    spp3d,
    sppf,
    sppf1d,
    sppf2d,
    sppf3d,
)
from .roi import roi_align, roi_align2d, roi_pool, roi_pool2d
from .s3 import s3_pool, s3_pool1d, s3_pool2d, s3_pool3d
from .segment import segment_pool
from .soft import soft_pool, soft_pool1d, soft_pool2d, soft_pool3d
from .spectral import spectral_pool, spectral_pool1d, spectral_pool2d, spectral_pool3d
from .stochastic import stochastic_pool, stochastic_pool1d, stochastic_pool2d, stochastic_pool3d
from .tree import tree_pool, tree_pool1d, tree_pool2d, tree_pool3d
from .unpool import max_unpool, max_unpool1d, max_unpool2d, max_unpool3d
from .wavelet import wavelet_pool, wavelet_pool1d, wavelet_pool2d, wavelet_pool3d

__all__ = [
    "multiscale_roi_align",
    "multiscale_roi_align2d",
    "precise_roi_pool",
    "precise_roi_pool2d",
    "ps_roi_pool",
    "ps_roi_pool2d",
    "ps_roi_align",
    "ps_roi_align2d",
    "roi_pool",
    "roi_pool2d",
    "roi_align",
    "roi_align2d",
    "blur_pool",
    "blur_pool1d",
    "blur_pool2d",
    "blur_pool3d",
    "max_blur_pool",
    "max_blur_pool1d",
    "max_blur_pool2d",
    "max_blur_pool3d",
    "binomial_filter",
    "dpp_pool",
    "dpp_pool1d",
    "dpp_pool2d",
    "dpp_pool3d",
    "gated_pool",
    "gated_pool1d",
    "gated_pool2d",
    "gated_pool3d",
    "gem_pool",
    "gem_pool1d",
    "gem_pool2d",
    "gem_pool3d",
    "global_gem_pool",
    "lip_pool",
    "lip_pool1d",
    "lip_pool2d",
    "lip_pool3d",
    "lse_pool",
    "lse_pool1d",
    "lse_pool2d",
    "lse_pool3d",
    "median_pool",
    "median_pool1d",
    "median_pool2d",
    "median_pool3d",
    "mixed_pool",
    "mixed_pool1d",
    "mixed_pool2d",
    "mixed_pool3d",
    "s3_pool",
    "s3_pool1d",
    "s3_pool2d",
    "s3_pool3d",
    "spectral_pool",
    "spectral_pool1d",
    "spectral_pool2d",
    "spectral_pool3d",
    "stochastic_pool",
    "stochastic_pool1d",
    "stochastic_pool2d",
    "stochastic_pool3d",
    "tree_pool",
    "tree_pool1d",
    "tree_pool2d",
    "tree_pool3d",
    "wavelet_pool",
    "wavelet_pool1d",
    "wavelet_pool2d",
    "wavelet_pool3d",
    "vjp",
    "set_num_threads",
    "get_num_threads",
    "max_pool",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "lp_pool",
    "lp_pool1d",
    "lp_pool2d",
    "lp_pool3d",
    "adaptive_max_pool",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "adaptive_avg_pool",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "global_max_pool",
    "global_avg_pool",
    "fractional_max_pool",
    "fractional_max_pool1d",
    "fractional_max_pool2d",
    "fractional_max_pool3d",
    "max_unpool",
    "max_unpool1d",
    "max_unpool2d",
    "max_unpool3d",
    "soft_pool",
    "soft_pool1d",
    "soft_pool2d",
    "soft_pool3d",
    "segment_pool",
    "masked_pool",
    "masked_pool1d",
    "masked_pool2d",
    "masked_pool3d",
    "attention_pool",
    "attention_pool1d",
    "attention_pool2d",
    "attention_pool3d",
    "spatial_pyramid_pool",
    "spatial_pyramid_pool1d",
    "spatial_pyramid_pool2d",
    "spatial_pyramid_pool3d",
    "spp",
    "spp1d",
    "spp2d",
    "spp3d",
    "sppf",
    "sppf1d",
    "sppf2d",
    "sppf3d",
]
