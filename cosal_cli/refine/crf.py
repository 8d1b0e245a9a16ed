"""The fully connected CRF of Krähenbühl & Koltun (NIPS 2011), and ``--refine crf`` built on it.

Mean-field inference over every pixel pair with two Gaussian kernels, as pydensecrf's ``DenseCRF2D``:
an appearance kernel over (x/80, y/80, r/13, g/13, b/13) with Potts weight 10, a smoothness kernel
over (x/3, y/3) with weight 3 (the paper's defaults), symmetric normalisation, 5 iterations.

Two backends compute the same thing:

- ``torch``, cosal's own, on CPU or CUDA: the kernels are permutohedral-lattice filters
  (:mod:`cosal_cli.refine.lattice`) that follow pydensecrf's C++ step for step. It needs no compiler.
- ``pydensecrf``, the reference, from the ``crf`` extra (``pip install 'cosal-cli[crf]'``, which
  builds pydensecrf2 from source with a C compiler).

``backend="auto"`` takes torch on CUDA; on CPU it takes pydensecrf when it is installed, because
``benchmarks/crf_speed.py`` measured it faster there, and torch otherwise.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import torch

from cosal_cli.refine.lattice import PermutohedralLattice

BACKENDS = ("auto", "torch", "pydensecrf")
CLIP = 1e-5  # pydensecrf.utils.unary_from_softmax's: a probability of 0 costs -log(1e-5), not infinity


@dataclass(frozen=True)
class CrfParameters:
    """Kernel widths (pixels, and RGB levels for ``appearance_rgb``), Potts weights and iterations."""

    smoothness_xy: float = 3.0
    smoothness_weight: float = 3.0
    appearance_xy: float = 80.0
    appearance_rgb: float = 13.0
    appearance_weight: float = 10.0
    iterations: int = 5


def unary_from_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """(L, H, W) label probabilities to the energies -log p (clipped), float32."""
    return -np.log(np.clip(probabilities, CLIP, 1.0)).astype(np.float32)


def unary_from_map(saliency: np.ndarray) -> np.ndarray:
    """An (H, W) map in [0, 1] to (2, H, W) energies of background and foreground."""
    saliency = saliency.astype(np.float32)
    return unary_from_probabilities(np.stack([1.0 - saliency, saliency]))


def dense_crf(unary: np.ndarray, image: np.ndarray, parameters: CrfParameters = CrfParameters(),
              backend: str = "auto", device: torch.device | str = "cpu") -> np.ndarray:  # fmt: skip
    """Mean-field marginals (L, H, W) float32 of the CRF with (L, H, W) ``unary`` energies on ``image``.

    ``image`` is (H, W, 3) uint8 RGB. The argmax over labels gives the CRF's labelling.
    """
    device = torch.device(device)
    if unary.shape[1:] != image.shape[:2]:
        raise ValueError(f"unary {unary.shape[1:]} and image {image.shape[:2]} differ in size")
    chosen = resolve_backend(backend, device)
    if chosen == "pydensecrf":
        return _pydensecrf(unary, image, parameters)
    return _torch_crf(unary, image, parameters, device)


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown CRF backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "pydensecrf" and not pydensecrf_installed():
        raise ValueError("the pydensecrf backend needs the crf extra: pip install 'cosal-cli[crf]' "
                         "(it builds pydensecrf2 with a C compiler)")  # fmt: skip
    if backend == "auto":
        return "pydensecrf" if device.type == "cpu" and pydensecrf_installed() else "torch"
    return backend


def pydensecrf_installed() -> bool:
    return importlib.util.find_spec("pydensecrf") is not None


class CrfRefiner:
    """``--refine crf``: the map is the foreground probability; the result is the CRF's marginal."""

    name = "crf"

    def __init__(self, device: torch.device | str = "cpu", backend: str = "auto",
                 parameters: CrfParameters = CrfParameters()):  # fmt: skip
        self.device, self.backend, self.parameters = torch.device(device), backend, parameters

    def __call__(self, saliency: np.ndarray, image: np.ndarray) -> np.ndarray:
        marginals = dense_crf(unary_from_map(saliency), image, self.parameters, self.backend, self.device)
        return marginals[1]


def _torch_crf(unary: np.ndarray, image: np.ndarray, parameters: CrfParameters, device: torch.device) -> np.ndarray:
    labels, height, width = unary.shape
    energies = torch.from_numpy(np.ascontiguousarray(unary, dtype=np.float32)).to(device).reshape(labels, -1)
    kernels = [(parameters.smoothness_weight, _lattice(image, parameters.smoothness_xy, None, device)),
               (parameters.appearance_weight,
                _lattice(image, parameters.appearance_xy, parameters.appearance_rgb, device))]  # fmt: skip
    marginals = torch.softmax(-energies, dim=0)
    for _ in range(parameters.iterations):
        logits = -energies
        for weight, kernel in kernels:
            logits = logits + weight * kernel.filter(marginals)
        marginals = torch.softmax(logits, dim=0)
    return marginals.reshape(labels, height, width).cpu().numpy()


class _NormalisedKernel:
    """A lattice filter with pydensecrf's NORMALIZE_SYMMETRIC: D K D, D = diag(1 / sqrt(K 1)).

    Marginals sum to 1 over labels and the filter is linear, so the last label's filtered marginal is
    D K D 1 minus the others': one lattice pass fewer per iteration (half the work for two labels).
    """

    def __init__(self, lattice: PermutohedralLattice, points: int, device: torch.device):
        self.lattice = lattice
        ones = torch.ones(1, points, dtype=torch.float32, device=device)
        self.norm = 1.0 / torch.sqrt(lattice.filter(ones) + 1e-20)
        self.filtered_ones = self.norm * lattice.filter(self.norm)

    def filter(self, marginals: torch.Tensor) -> torch.Tensor:
        first = self.norm * self.lattice.filter(marginals[:-1] * self.norm)
        return torch.cat([first, self.filtered_ones - first.sum(dim=0, keepdim=True)])


def _lattice(image: np.ndarray, xy: float, rgb: float | None, device: torch.device) -> _NormalisedKernel:
    """The kernel over (x/xy, y/xy) and, with ``rgb``, (r, g, b)/rgb: pydensecrf's feature order."""
    height, width = image.shape[:2]
    rows, columns = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                                   torch.arange(width, device=device, dtype=torch.float32), indexing="ij")  # fmt: skip
    features = [columns.reshape(-1) / xy, rows.reshape(-1) / xy]
    if rgb is not None:
        colours = torch.from_numpy(np.array(image, dtype=np.uint8)).to(device).reshape(-1, 3).float() / rgb
        features += [colours[:, 0], colours[:, 1], colours[:, 2]]
    lattice = PermutohedralLattice(torch.stack(features, dim=1))
    return _NormalisedKernel(lattice, height * width, device)


def _pydensecrf(unary: np.ndarray, image: np.ndarray, parameters: CrfParameters) -> np.ndarray:
    import pydensecrf.densecrf as dcrf

    labels, height, width = unary.shape
    crf = dcrf.DenseCRF2D(width, height, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(labels, -1), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=parameters.smoothness_xy, compat=parameters.smoothness_weight)
    crf.addPairwiseBilateral(sxy=parameters.appearance_xy, srgb=parameters.appearance_rgb,
                             rgbim=np.array(image, dtype=np.uint8, order="C"),  # a writable copy: Cython asks
                             compat=parameters.appearance_weight)  # fmt: skip
    marginals = np.asarray(crf.inference(parameters.iterations), dtype=np.float32)
    return marginals.reshape(labels, height, width)
