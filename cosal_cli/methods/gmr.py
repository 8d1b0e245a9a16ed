"""``gmr``: graph-based manifold ranking saliency (Yang, Zhang, Lu, Ruan, Yang, CVPR 2013).

Training-free and single-image: every image of the group is ranked on its own superpixel graph
(:mod:`cosal_cli.refine.manifold_ranking`), on the CPU with numpy, whatever the device.
"""

from __future__ import annotations

import numpy as np
import torch

from cosal_cli.methods import base
from cosal_cli.methods.base import GroupImages
from cosal_cli.refine.manifold_ranking import gmr_saliency


class Method(base.Method):
    name = "gmr"
    roles = ()
    # 256 x 256 keeps ~200 superpixels of ~18 x 18 pixels, close to the authors' ~400 x 300 images with
    # 200 superpixels of ~25 x 25, at well under a second per image on the CPU.
    input_size = 256
    output_interpolation = "bilinear"  # the map is piecewise constant per superpixel; bicubic would ring

    def predict_group(self, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        from threadpoolctl import threadpool_limits

        pixels = images.permute(0, 2, 3, 1).detach().cpu().double().numpy()
        # A 200 x 200 inverse is far too small for BLAS threads to help: with two threads on a busy
        # 2-core machine it took 86 ms instead of 0.8 ms. One thread is never slower here.
        with threadpool_limits(limits=1, user_api="blas"):
            maps = np.stack([gmr_saliency(image) for image in pixels])
        return torch.from_numpy(maps).to(images.device)
