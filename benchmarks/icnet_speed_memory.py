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

import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch
from csmg_mask_speed import median_time  # beside this script: its folder is on sys.path
from gicd_speed_memory import (
    detect,
    example_batch,
    make_group,
    parse_arguments,
    print_peak_memory,
)


def linked_home(folder: Path, cache: Path) -> Path:
    """A COSAL_HOME whose weights are links to those of ``cache`` (nothing else: no cached SISMs)."""
    (folder / "weights").mkdir(parents=True)
    for path in (cache / "weights").glob("*.safetensors"):
        (folder / "weights" / path.name).symlink_to(path)
    return folder


def network_rates(batch: torch.Tensor, device: torch.device, repeats: int) -> dict[str, float]:
    from cosal_cli.methods.loader import load_method
    from cosal_cli.models import icnet as icnet_model

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
    from cosal_cli.hub import cache_home

    args = parse_arguments(__doc__)
    device = torch.device(args.device)
    user_cache = cache_home()  # read before COSAL_HOME is pointed at the temporary homes below
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["COSAL_HOME"] = str(linked_home(Path(tmp) / "home", user_cache))
        batch = example_batch(args.speed_size, device)
        rates = network_rates(batch, device, args.repeats)
        group = make_group(Path(tmp) / "group", args.speed_size)
        end_to_end = {}
        # icnet twice on the same group: its SISMs are computed by the first run and read from the cache by the second
        runs = (("icnet, SISMs computed", "icnet"), ("icnet, SISMs cached", "icnet"), ("sod", "sod"), ("gicd", "gicd"))
        for label, name in runs:
            result = subprocess.run(detect(group, Path(tmp) / label, name, args.device), capture_output=True,
                                    text=True, check=True)  # fmt: skip
            end_to_end[label] = json.loads(result.stdout)["images_per_second"]
    print(f"\n{args.speed_size}-image group  {'network img/s':>14} {'detect img/s':>13}")
    for name, rate in rates.items():
        print(f"{name:<24} {rate:>14.2f} {end_to_end[name]:>13.2f}")
    print(f"icnet (SISMs computed) / sod network speed: {rates['icnet, SISMs computed'] / rates['sod']:.2f}x; "
          f"icnet (SISMs computed) / gicd: {rates['icnet, SISMs computed'] / rates['gicd']:.2f}x")  # fmt: skip

    def fresh_home(folder: Path) -> None:
        os.environ["COSAL_HOME"] = str(linked_home(folder / "home", user_cache))

    print_peak_memory("icnet", args.memory_sizes, args.device, prepare=fresh_home)


if __name__ == "__main__":
    main()
