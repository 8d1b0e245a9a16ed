"""GICD speed (a 20-image group) and peak memory (groups up to 300 images), side by side with sod.

    python benchmarks/gicd_speed_memory.py [--speed-size 20] [--memory-sizes 20 100 300] [--device cpu]

Groups are made from the committed example images, copied to the size wanted. Weights must be cached
(`cosal weights pull gicd sod`). Prints:

* network images/s of ``predict_group`` on one decoded group (median of --repeats), for gicd, sod and
  the official-layout GICD network (random weights: its speed does not depend on their values);
* end-to-end images/s of `cosal detect --json` (decode, network, resize back, PNG writing);
* the peak resident memory of `cosal detect --method gicd` per group size, each in a fresh process,
  and its growth per image beyond the smallest group. The consensus is summed chunk by chunk and the
  GIM runs chunk by chunk, so what grows with the group is only what the runner keeps per image
  (the decoded 224x224 input and the map), not the network's activations.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from csmg_mask_speed import median_time  # beside this script: its folder is on sys.path
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples" / "Image").glob("*/*.jpg"))
PEAK_RSS = "import resource, subprocess, sys; run = subprocess.run(sys.argv[1:], capture_output=True, text=True); " \
    "sys.exit(f'exit {run.returncode}: {run.stderr[-3000:]}') if run.returncode else " \
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"  # fmt: skip


def make_group(folder: Path, size: int) -> Path:
    folder.mkdir(parents=True)
    for index in range(size):
        path = EXAMPLES[index % len(EXAMPLES)]
        shutil.copy(path, folder / f"{index:04d}{path.suffix}")
    return folder


def network_rate(name: str, batch: torch.Tensor, device: torch.device, repeats: int) -> float:
    if name == "gicd-official (random weights)":
        from cosal_cli.models.gicd import GICD
        from cosal_cli.models.vgg import imagenet_normalise

        model = GICD().to(device).eval().requires_grad_(False)

        def predict() -> torch.Tensor:
            with torch.no_grad():
                return model.predict_group(imagenet_normalise(batch))
    else:
        from cosal_cli.methods.loader import load_method

        method = load_method(name, device, offline=True)

        def predict() -> torch.Tensor:
            with torch.inference_mode(method.inference_mode):
                return method.predict_group(batch)

    return len(batch) / median_time(predict, repeats)


def detect(group: Path, out: Path, method: str, device: str) -> list[str]:
    return [sys.executable, "-m", "cosal_cli", "detect", str(group), "-o", str(out), "--method", method,
            "--device", device, "--offline", "--json", "--quiet"]  # fmt: skip


def print_peak_memory(method: str, sizes: list[int], device: str, prepare=None, extra: tuple[str, ...] = ()) -> None:
    """Peak RSS of `cosal detect --method METHOD [EXTRA]` on one group of each size, each in a fresh process.

    ``prepare(folder)``, if given, runs first in each run's temporary folder (e.g. to set COSAL_HOME).
    """
    print(f"\n{'images':>6} {'peak RSS MiB':>13} {'MiB per image beyond the first group':>38}")
    peaks = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            if prepare is not None:
                prepare(Path(tmp))
            group = make_group(Path(tmp) / "group", size)
            command = [sys.executable, "-c", PEAK_RSS, *detect(group, Path(tmp) / "out", method, device), *extra]
            run = subprocess.run(command, capture_output=True, text=True, check=False)
            if run.returncode:
                raise SystemExit(f"{method} on {size} images failed: {run.stderr}")
            peak = int(run.stdout) / 1024
        peaks.append(peak)
        growth = f"{(peak - peaks[0]) / (size - sizes[0]):.2f}" if len(peaks) > 1 else "-"
        print(f"{size:>6} {peak:>13.0f} {growth:>38}")
    print(f"peak memory, {sizes[-1]} vs {sizes[0]} images: {peaks[-1] / peaks[0]:.2f}x")


def parse_arguments(description: str) -> argparse.Namespace:
    """The options of the speed-and-memory benchmarks; prints the device line."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speed-size", type=int, default=20)
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[20, 100, 300])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, repeats {args.repeats}")
    return args


def example_batch(size: int, device: torch.device) -> torch.Tensor:
    """A decoded group of ``size`` example images, as the inference path gives it to a method (224 x 224, [0, 1])."""
    paths = [EXAMPLES[i % len(EXAMPLES)] for i in range(size)]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR)) for p in paths])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255).to(device)


def main() -> None:
    args = parse_arguments(__doc__)
    device = torch.device(args.device)
    batch = example_batch(args.speed_size, device)
    print(f"\n{args.speed_size}-image group  {'network img/s':>14} {'detect img/s':>13}")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        group = make_group(Path(tmp) / "group", args.speed_size)
        for name in ("gicd", "sod", "gicd-official (random weights)"):
            rates[name] = network_rate(name, batch, device, args.repeats)
            end_to_end = "-"
            if not name.startswith("gicd-official"):
                result = subprocess.run(detect(group, Path(tmp) / name, name, args.device), capture_output=True,
                                        text=True, check=True)  # fmt: skip
                end_to_end = f"{json.loads(result.stdout)['images_per_second']:.2f}"
            print(f"{name:<31} {rates[name]:>14.2f} {end_to_end:>13}")
    print(f"gicd / sod network speed: {rates['gicd'] / rates['sod']:.2f}x; "
          f"gicd / official-layout GICD: {rates['gicd'] / rates['gicd-official (random weights)']:.2f}x")  # fmt: skip

    print_peak_memory("gicd", args.memory_sizes, args.device)


if __name__ == "__main__":
    main()
