"""The saliency metrics of the co-saliency literature, as two toolboxes compute them.

Two protocols, because the toolboxes papers use disagree in small, documented ways
(``../shared/reference/architectures.md`` section 6 lists them):

``pysodmetrics``
    lartpang/PySODMetrics (and the MATLAB CoSOD toolbox it mirrors): prediction ``/255`` then
    min-max normalised if not constant, ground truth ``> 128``, 256 thresholds on the map quantised
    to uint8, E-measure special cases for empty and full masks, 1-based S-measure centroid.
``eval-co-sod``
    zzhanghub/eval-co-sod (GICD, GCoNet, DCFM): float32 maps, min-max ``(p-min)/(max-min+1e-20)``,
    soft (un-binarised) ground truth, 255 thresholds ``linspace(0, 1-1e-10, 255)``, MAE on the raw
    map, no E-measure special cases, 0-based S-measure centroid.

Everything is computed from per-grey-level histograms: an 8-bit map has at most 256 distinct values,
so F, E, MAE, the adaptive scores and both parts of the S-measure (per quadrant) follow exactly from
one ``bincount`` instead of one pass over the image per threshold. Only the weighted F-measure needs
image-sized work (a distance transform and a Gaussian filter).

The package splits that work by job: :mod:`.protocols` (names, constants, thresholds),
:mod:`.evaluate` (one pair, either protocol), :mod:`.pysod` and :mod:`.eval_co_sod` (the two
protocols), :mod:`.smeasure` and :mod:`.weighted_f` (the shared S-measure and the weighted
F-measure) and :mod:`.accumulate` (dataset-level results).
"""

from __future__ import annotations

from cosal_cli.metrics.accumulate import (
    SUMMARY,
    MetricAccumulator,
    average_precision,
    derive,
    roc_auc,
)
from cosal_cli.metrics.evaluate import evaluate_pair, match_size
from cosal_cli.metrics.protocols import (
    BETA2,
    CURVES,
    EVAL_EPS,
    PROTOCOLS,
    PYSOD_EPS,
    SCALARS,
    ImageScores,
    thresholds,
)

__all__ = [
    "BETA2",
    "CURVES",
    "EVAL_EPS",
    "PROTOCOLS",
    "PYSOD_EPS",
    "SCALARS",
    "SUMMARY",
    "ImageScores",
    "MetricAccumulator",
    "average_precision",
    "derive",
    "evaluate_pair",
    "match_size",
    "roc_auc",
    "thresholds",
]
