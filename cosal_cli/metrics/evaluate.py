"""One prediction/mask pair: resizing it to the mask and scoring it under either protocol."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from cosal_cli.metrics.eval_co_sod import _eval_co_sod_scores
from cosal_cli.metrics.protocols import ImageScores, _check_protocol
from cosal_cli.metrics.pysod import _pysod_scores


def match_size(pred: np.ndarray, shape: tuple[int, int], protocol: str) -> np.ndarray:
    """Resize an 8-bit prediction to the mask's (height, width) the way the protocol's tools do.

    PySODEvalToolkit resizes with ``cv2.resize`` (bilinear); eval-co-sod with PIL bilinear.
    """
    _check_protocol(protocol)
    if pred.shape == shape:
        return pred
    height, width = shape
    if protocol == "pysodmetrics":
        return cv2.resize(pred, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.asarray(Image.fromarray(pred).resize((width, height), Image.BILINEAR))


def evaluate_pair(pred: np.ndarray, gt: np.ndarray, protocol: str = "pysodmetrics") -> ImageScores:
    """Every metric of one 8-bit grey prediction against its 8-bit grey mask of the same shape."""
    _check_protocol(protocol)
    if pred.dtype != np.uint8 or gt.dtype != np.uint8:
        raise TypeError(f"pred and gt must be uint8 grey images, got {pred.dtype} and {gt.dtype}")
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be 2-D and of the same shape")
    pysod = _pysod_scores(pred, gt)
    if protocol == "pysodmetrics":
        return pysod
    return _eval_co_sod_scores(pred, gt, pysod)
