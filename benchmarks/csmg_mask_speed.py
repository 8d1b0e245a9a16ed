"""csmg-mask throughput: where the time goes, for several group sizes, in one run.

    python benchmarks/csmg_mask_speed.py [--sizes 5 20 100] [--device cpu] [--repeats 3]

Groups are made from the committed example images (repeated to the size wanted); the VGG-16 weights
must be cached (`cosal weights pull vgg16-imagenet`). Prints, per group size, the median time of the
backbone (VGG-16 to relu5_3), of the ADMM mask, and the end-to-end images/s of `cosal detect`
(decode, network, resize back, PNG write), plus the ADMM's share of the compute.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples" / "Image").glob("*/*.jpg"))


def median_time(function, repeats: int) -> float:
    function()  # warm-up: first calls pay for thread pools and LAPACK start-up
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        function()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 20, 100])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from cosal_cli.methods.loader import load_method
    from cosal_cli.refine.admm import co_salient_masks

    device = torch.device(args.device)
    method = load_method("csmg-mask", device, offline=True)
    print(f"device {device}, torch threads {torch.get_num_threads()}, repeats {args.repeats}")
    print(f"{'images':>6} {'backbone s':>11} {'ADMM s':>8} {'ADMM share':>10} {'detect img/s':>13}")
    for size in args.sizes:
        paths = [EXAMPLES[i % len(EXAMPLES)] for i in range(size)]
        pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR)) for p in paths])
        batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255).to(device)
        with torch.inference_mode():
            features = method.features(batch).cpu()
            backbone = median_time(lambda batch=batch: method.features(batch), args.repeats)
            admm = median_time(lambda features=features: co_salient_masks(features), args.repeats)
        rate = detect_rate(paths, args.device)
        print(f"{size:>6} {backbone:>11.3f} {admm:>8.3f} {admm / (backbone + admm):>10.1%} {rate:>13.2f}")


def detect_rate(paths: list[Path], device: str) -> float:
    """End-to-end images/s reported by `cosal detect --json` on a group of these files."""
    with tempfile.TemporaryDirectory() as tmp:
        group = Path(tmp) / "group"
        group.mkdir()
        for index, path in enumerate(paths):
            shutil.copy(path, group / f"{index:04d}{path.suffix}")
        command = [sys.executable, "-m", "cosal_cli", "detect", str(group), "-o", str(Path(tmp) / "out"),
                   "--method", "csmg-mask", "--device", device, "--offline", "--json", "--quiet"]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(result.stdout)["images_per_second"]


if __name__ == "__main__":
    main()
