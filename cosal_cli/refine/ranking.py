"""``--refine ranking``: propagate a map over the image's SLIC superpixels by manifold ranking.

The map's mean over each superpixel is the query; ranking it on ``gmr``'s close-loop superpixel
graph (:mod:`cosal_cli.refine.manifold_ranking`, equation 3 of Yang et al., CVPR 2013) spreads it
along colour-coherent regions, so the result follows object boundaries and fills holes the method
left inside one region. The graph is built at 256 px on the long side, as ``gmr`` works; the
refined map is brought back to the image's size bilinearly.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from cosal_cli.refine import manifold_ranking as ranking

WORKING_SIDE = 256  # gmr's resolution: ~200 superpixels of ~18 x 18 pixels


class RankingRefiner:
    name = "ranking"

    def __call__(self, saliency: np.ndarray, image: np.ndarray) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        height, width = saliency.shape
        scale = WORKING_SIDE / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR), dtype=np.float64) / 255.0
        query = np.asarray(Image.fromarray(saliency.astype(np.float32)).resize(size, Image.BILINEAR))
        graph = ranking.superpixel_graph(small)
        labels = graph.labels
        with threadpool_limits(limits=1, user_api="blas"):  # a ~200 x 200 solve: threads only cost
            ranked = ranking.rank(ranking.ranking_matrix(graph.affinity), ranking.superpixel_means(labels, query))
        refined = ranking.paint(labels, ranking.normalise(ranked)).astype(np.float32)
        full = Image.fromarray(refined).resize((width, height), Image.BILINEAR)
        return np.clip(np.asarray(full, dtype=np.float32), 0.0, 1.0)
