"""CSMG speed with and without stage 3 (a 20-image group) and peak memory (groups up to 100 images).

    python benchmarks/csmg_speed_memory.py [--speed-size 20] [--memory-sizes 20 100] [--device cpu]

Groups are made from the committed example images, copied to the size wanted; weights must be cached
(`cosal weights pull csmg`). Prints the network images/s of ``predict_group`` on one decoded group
(median of --repeats) and the end-to-end images/s of `cosal detect --json`, for `csmg` (all three
stages), `csmg --smoothing off` (the FCN and its masks) and `csmg-mask` (stage 1), then the peak
resident memory of `cosal detect --method csmg` per group size. Stage 3's graph holds each scale's
superpixels of the whole group with a bounded number of edges each (sparse), so it grows linearly.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import torch
from csmg_mask_speed import median_time  # beside this script: its folder is on sys.path
from gicd_speed_memory import detect, example_batch, make_group, parse_arguments, print_peak_memory

RUNS = (("csmg", ()), ("csmg", ("--smoothing", "off")), ("csmg-mask", ()))


def network_rate(name: str, flags: tuple[str, ...], batch: torch.Tensor, device: torch.device, repeats: int) -> float:
    from cosal_cli import methods
    from cosal_cli.methods.loader import load_method

    values = {flags[0].removeprefix("--"): flags[1]} if flags else {}
    method = load_method(name, device, offline=True, options=methods.options_for(name, values))

    def predict() -> torch.Tensor:
        with torch.inference_mode(method.inference_mode):
            return method.predict_group(batch)

    return len(batch) / median_time(predict, repeats)


def main() -> None:
    args = parse_arguments(__doc__)
    device = torch.device(args.device)
    batch = example_batch(args.speed_size, device)
    print(f"\n{args.speed_size}-image group            {'network img/s':>14} {'detect img/s':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        group = make_group(Path(tmp) / "group", args.speed_size)
        for index, (name, flags) in enumerate(RUNS):
            rate = network_rate(name, flags, batch, device, args.repeats)
            command = [*detect(group, Path(tmp) / f"out{index}", name, args.device), *flags]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            end_to_end = json.loads(result.stdout)["images_per_second"]
            print(f"{' '.join([name, *flags]):<31} {rate:>14.2f} {end_to_end:>13.2f}")
    print_peak_memory("csmg", args.memory_sizes, args.device)


if __name__ == "__main__":
    main()
