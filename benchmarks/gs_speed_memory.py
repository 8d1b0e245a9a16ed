"""GS speed (a 20-image group, next to sod on the same frozen VGG-16) and peak memory (up to 300 images).

    python benchmarks/gs_speed_memory.py [--speed-size 20] [--memory-sizes 20 100 300] [--device cpu]

Groups are made from the committed example images, copied to the size wanted; weights must be cached
(`cosal weights pull gs sod`). Prints the network images/s of ``predict_group`` on one decoded group
(median of --repeats) and the end-to-end images/s of `cosal detect --json` for `gs` and for `sod`
(one VGG-16 pass per image, no group), their ratio, then the peak resident memory of
`cosal detect --method gs` per group size. The group vector is pooled chunk by chunk (running sums);
what grows with the group is the input tensor (0.6 MB per image at 224 px, for every method) and
the float16 pool3-pool5 pyramid GS keeps so that VGG-16 runs once per image (0.65 MB per image).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import torch
from csmg_speed_memory import network_rate  # beside this script: its folder is on sys.path
from gicd_speed_memory import detect, example_batch, make_group, parse_arguments, print_peak_memory


def main() -> None:
    args = parse_arguments(__doc__)
    device = torch.device(args.device)
    batch = example_batch(args.speed_size, device)
    print(f"\n{args.speed_size}-image group {'network img/s':>14} {'detect img/s':>13}")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        group = make_group(Path(tmp) / "group", args.speed_size)
        for name in ("gs", "sod"):
            rate = network_rate(name, (), batch, device, args.repeats)
            result = subprocess.run(detect(group, Path(tmp) / name, name, args.device), capture_output=True,
                                    text=True, check=True)  # fmt: skip
            rates[name] = (rate, json.loads(result.stdout)["images_per_second"])
            print(f"{name:<14} {rate:>14.2f} {rates[name][1]:>13.2f}")
    (gs_network, gs_detect), (sod_network, sod_detect) = rates["gs"], rates["sod"]
    print(f"gs / sod: network {gs_network / sod_network:.2f}x, detect {gs_detect / sod_detect:.2f}x")
    print_peak_memory("gs", args.memory_sizes, args.device)


if __name__ == "__main__":
    main()
