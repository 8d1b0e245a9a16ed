"""Dense CRF speed: cosal's torch backend next to pydensecrf2, side by side in one run.

    python benchmarks/crf_speed.py [--sizes 224x224 512x512 683x1024] [--rounds 5] [--threads 1]
                                   [--cuda]

For each size, an example photo is resized to it and given a map (a soft disc: the CRF's cost does not
depend on the map's content), and 5 mean-field iterations run in alternating rounds: pydensecrf2, torch
on CPU, and with ``--cuda`` torch on the GPU (synchronised). Prints the median seconds per backend, the
ratio torch-CPU / pydensecrf2 (the issue's bound: at most 2), pydensecrf2 / torch-CUDA (aim: at least
20), and the agreement of the labels (IoU) and marginals (mean absolute difference) with pydensecrf2.
pydensecrf2 comes with the ``crf`` extra; without it only the torch columns are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTO = sorted((REPO / "examples" / "Image" / "cat").glob("*.jpg"))[0]


def test_input(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(Image.open(PHOTO).convert("RGB").resize((width, height), Image.BILINEAR))
    rows, columns = np.mgrid[0:height, 0:width]
    distance = np.hypot((rows - height / 2) / height, (columns - width / 2) / width)
    saliency = np.clip(1.2 - 3.0 * distance, 0.02, 0.98).astype(np.float32)
    return image, saliency


def timed(function) -> tuple[float, np.ndarray]:
    tick = time.perf_counter()
    result = function()
    return time.perf_counter() - tick, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["224x224", "512x512", "683x1024"], help="HEIGHTxWIDTH")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (pydensecrf2 uses one)")
    parser.add_argument("--cuda", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from cosal_cli.refine.crf import dense_crf, pydensecrf_installed, unary_from_map

    backends = [("pydensecrf", "cpu")] if pydensecrf_installed() else []
    backends += [("torch", "cpu")] + ([("torch", "cuda")] if args.cuda else [])
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), {args.rounds} rounds, 5 iterations")
    print(f"{'size':>9} " + " ".join(f"{b + '/' + d + ' s':>15}" for b, d in backends)
          + f" {'torch/ref':>9} {'ref/cuda':>8} {'IoU':>7} {'MAD':>8}")  # fmt: skip
    for size in args.sizes:
        height, width = (int(side) for side in size.split("x"))
        image, saliency = test_input(width, height)
        unary = unary_from_map(saliency)
        times: dict[tuple[str, str], list[float]] = {backend: [] for backend in backends}
        results = {}
        for _ in range(args.rounds + 1):  # round 0 warms up (thread pools, CUDA context)
            for backend, device in backends:
                if device == "cuda":
                    torch.cuda.synchronize()
                seconds, results[backend, device] = timed(
                    lambda unary=unary, image=image, backend=backend, device=device: dense_crf(
                        unary, image, backend=backend, device=device))  # fmt: skip
                times[backend, device].append(seconds)
        medians = {key: statistics.median(values[1:]) for key, values in times.items()}
        print(f"{size:>9} " + " ".join(f"{medians[key]:>15.3f}" for key in backends) + _comparison(medians, results))


def _comparison(medians: dict, results: dict) -> str:
    reference = results.get(("pydensecrf", "cpu"))
    if reference is None:
        return ""
    ours = results["torch", "cpu"]
    labels, their_labels = ours.argmax(0) == 1, reference.argmax(0) == 1
    iou = (labels & their_labels).sum() / max(1, (labels | their_labels).sum())
    mad = np.abs(ours[1] - reference[1]).mean()
    ratio = medians["torch", "cpu"] / medians["pydensecrf", "cpu"]
    cuda = medians.get(("torch", "cuda"))
    speedup = f"{medians['pydensecrf', 'cpu'] / cuda:>8.1f}" if cuda else f"{'-':>8}"
    return f" {ratio:>9.2f} {speedup} {iou:>7.4f} {mad:>8.5f}"


if __name__ == "__main__":
    main()
