"""ICNet speed (a 20-image group) and peak memory (groups up to 300 images), side by side with sod and gicd.

    python benchmarks/icnet_speed_memory.py [--speed-size 20] [--memory-sizes 20 100 300] [--device cpu]

Groups are copies of the committed example images. Weights must be cached (`cosal weights pull
--all`); every run uses a fresh temporary COSAL_HOME that links them, so SISMs start uncached. Prints:

* network images/s of ``predict_group`` on one decoded group (median of --repeats): icnet with its
  SISMs computed (sod, uncached: what a first run pays), icnet with cached SISMs (what a second method
  or run over the same images pays), sod and gicd;
* end-to-end images/s of `cosal detect --json` (decode, SISMs, network, resize back, PNG writing);
* the peak resident memory of `cosal detect --method icnet` per group size, each in a fresh process.
  The co-saliency modules need the whole group, but only its two deepest VGG taps; the decoder runs
  in chunks of --batch-size (the VGG-16 is run twice when the group is larger than a chunk).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from csmg_mask_speed import median_time  # beside this script: its folder is on sys.path
from gicd_speed_memory import EXAMPLES, PEAK_RSS, detect, make_group
from PIL import Image


def linked_home(folder: Path) -> Path:
    """A COSAL_HOME whose weights are links to the user's cache (nothing else: no cached SISMs)."""
    from cosal_cli.hub import cache_home

    (folder / "weights").mkdir(parents=True)
    for path in (cache_home() / "weights").glob("*.safetensors"):
        (folder / "weights" / path.name).symlink_to(path)
    return folder


def network_rates(batch: torch.Tensor, device: torch.device, repeats: int) -> dict[str, float]:
    from cosal_cli.models import icnet as icnet_model
    from cosal_cli.pipeline import load_method

    icnet = load_method("icnet", device, offline=True)
    generator = icnet.sisms
    generator.cache = None  # every call computes the SISMs
    network = icnet.network

    def with_cached_sisms() -> torch.Tensor:
        return icnet_model.predict_group(network.head, network.encode, batch, sisms, icnet.batch_size)

    with torch.inference_mode():
        sisms = generator(batch)
        rates = {
            "icnet, SISMs computed": len(batch) / median_time(lambda: icnet.predict_group(batch), repeats),
            "icnet, SISMs cached": len(batch) / median_time(with_cached_sisms, repeats),
        }
    for name in ("sod", "gicd"):
        method = load_method(name, device, offline=True)
        with torch.inference_mode(method.inference_mode):
            rates[name] = len(batch) / median_time(lambda m=method: m.predict_group(batch), repeats)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speed-size", type=int, default=20)
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[20, 100, 300])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, repeats {args.repeats}")

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["COSAL_HOME"] = str(linked_home(Path(tmp) / "home"))
        paths = [EXAMPLES[i % len(EXAMPLES)] for i in range(args.speed_size)]
        pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR)) for p in paths])
        batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255).to(device)
        rates = network_rates(batch, device, args.repeats)
        group = make_group(Path(tmp) / "group", args.speed_size)
        end_to_end = {}
        for name in ("icnet", "icnet", "sod", "gicd"):  # icnet twice: SISMs computed, then read from the cache
            result = subprocess.run(detect(group, Path(tmp) / f"{name}-{len(end_to_end)}", name, args.device),
                                    capture_output=True, text=True, check=True)  # fmt: skip
            label = name if name != "icnet" else ("icnet, SISMs computed" if "icnet, SISMs computed" not in
                                                  end_to_end else "icnet, SISMs cached")  # fmt: skip
            end_to_end[label] = json.loads(result.stdout)["images_per_second"]
    print(f"\n{args.speed_size}-image group  {'network img/s':>14} {'detect img/s':>13}")
    for name, rate in rates.items():
        print(f"{name:<24} {rate:>14.2f} {end_to_end[name]:>13.2f}")
    print(f"icnet (SISMs computed) / sod network speed: {rates['icnet, SISMs computed'] / rates['sod']:.2f}x; "
          f"icnet (SISMs computed) / gicd: {rates['icnet, SISMs computed'] / rates['gicd']:.2f}x")  # fmt: skip

    print(f"\n{'images':>6} {'peak RSS MiB':>13} {'MiB per image beyond the first group':>38}")
    peaks = []
    for size in args.memory_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["COSAL_HOME"] = str(linked_home(Path(tmp) / "home"))
            group = make_group(Path(tmp) / "group", size)
            command = [sys.executable, "-c", PEAK_RSS, *detect(group, Path(tmp) / "out", "icnet", args.device)]
            peak = int(subprocess.run(command, capture_output=True, text=True, check=True).stdout) / 1024
        peaks.append(peak)
        growth = f"{(peak - peaks[0]) / (size - args.memory_sizes[0]):.2f}" if len(peaks) > 1 else "-"
        print(f"{size:>6} {peak:>13.0f} {growth:>38}")
    print(f"peak memory, {args.memory_sizes[-1]} vs {args.memory_sizes[0]} images: {peaks[-1] / peaks[0]:.2f}x")


if __name__ == "__main__":
    main()
