"""GWD speed (a 20-image group, next to sod on the same frozen VGG-16) and peak memory (up to 300 images).

    python benchmarks/gwd_speed_memory.py [--speed-size 20] [--memory-sizes 20 100 300] [--device cpu]

Groups are made from the committed example images, copied to the size wanted; weights must be cached
(`cosal weights pull gwd sod`). Prints the network images/s of ``predict_group`` on one decoded group
(median of --repeats) and the end-to-end images/s of `cosal detect --json` for `gwd` and for `sod`
(one VGG-16 pass per image, no group), their ratio, GWD's head passes per image (its covering design),
then the peak resident memory of `cosal detect --method gwd` per group size. GWD keeps every image's
relu5_3 (512 x 14 x 14 floats, 0.4 MB), and with the pool3 skip its details of pool3 (64 x 28 x 28, 0.2 MB),
for the whole group, so memory grows linearly with the group.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import torch
from csmg_speed_memory import network_rate  # beside this script: its folder is on sys.path
from gicd_speed_memory import detect, example_batch, make_group, parse_arguments, print_peak_memory


def beside_sod(name: str, args) -> None:
    """``name``'s network and `cosal detect` images/s next to sod's (the same frozen VGG-16), then its peak memory."""
    device = torch.device(args.device)
    batch = example_batch(args.speed_size, device)
    print(f"\n{args.speed_size}-image group {'network img/s':>14} {'detect img/s':>13}")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        group = make_group(Path(tmp) / "group", args.speed_size)
        for method in (name, "sod"):
            rate = network_rate(method, (), batch, device, args.repeats)
            result = subprocess.run(detect(group, Path(tmp) / method, method, args.device), capture_output=True,
                                    text=True, check=True)  # fmt: skip
            rates[method] = (rate, json.loads(result.stdout)["images_per_second"])
            print(f"{method:<14} {rate:>14.2f} {rates[method][1]:>13.2f}")
    (own_network, own_detect), (sod_network, sod_detect) = rates[name], rates["sod"]
    print(f"{name} / sod: network {own_network / sod_network:.2f}x, detect {own_detect / sod_detect:.2f}x")
    print_peak_memory(name, args.memory_sizes, args.device)


def main() -> None:
    from cosal_cli.models.gwd import GROUP_SIZE, covering_subsets

    args = parse_arguments(__doc__)
    passes = len(covering_subsets([str(index) for index in range(args.speed_size)])) * GROUP_SIZE / args.speed_size
    print(f"gwd head passes per image for {args.speed_size} images: {passes:.2f} (backbone: 1)")
    beside_sod("gwd", args)


if __name__ == "__main__":
    main()
