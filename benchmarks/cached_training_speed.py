"""How much faster `cosal train --cache-views` trains a head than training from images, side by side.

Runs the trainer's two batch sources on the same sub-groups of real training images, in alternating
rounds (so that a slow spell of the machine hits both), with a fixed number of torch threads:

* images: decode (kept in memory after the first round), augment, frozen encoder, head forward and backward;
* cached: read the cached views, head forward and backward (the encoder ran once, when the cache was built).

It prints seconds per image of each, their ratio, what building the cache costs per view, and from
that the number of epochs from which caching pays for itself.

    python benchmarks/cached_training_speed.py --data ../shared/data/duts_class --split training/splits/shared-v2.yaml
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from cosal_cli.hub import WeightHub
from cosal_cli.methods import method_class
from cosal_cli.splits import load_split
from cosal_cli.training import cache
from cosal_cli.training.sampler import SamplerSettings, by_group, epoch_batches
from cosal_cli.training.trainer import collect_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--method", default="gicd")
    parser.add_argument("--images", type=int, default=96, help="training images used (whole groups)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train_images = collect_data(args.data, load_split(args.split), val_limit=1).train
    images = [item for items in by_group(train_images).values() for item in items][: args.images]
    settings = SamplerSettings(size=args.size, min_group=3, max_group=8, composite_fraction=0.5, outsider_fraction=0.2)
    method = method_class(args.method)
    hub = WeightHub()
    backbone = hub.manifest.component(hub.manifest.roles(args.method)["backbone"])
    torch.manual_seed(0)
    network = method.build_network(hub.resolve(backbone.id, offline=True))  # the default head
    network.train()
    optimiser = torch.optim.Adam(network.head.parameters(), lr=1e-4)
    batches = epoch_batches(by_group(images), settings, 0)

    with tempfile.TemporaryDirectory() as folder:
        identity = cache.fingerprint(images, args.views, settings, args.method, backbone.sha256, network.config)
        started = time.perf_counter()
        features = cache.open_or_build(Path(folder), network, images, args.views, settings, identity, lambda _: None)
        build = (time.perf_counter() - started) / (len(images) * args.views)
        sources = {
            "images": cache.ImageBatches(settings, images, torch.device("cpu"), nullcontext()),
            "cached": cache.CachedBatches(features, settings, torch.device("cpu"), nullcontext()),
        }
        for item in images:  # decoding is a one-off in a real run too (the store keeps every image)
            sources["images"].store.get(item)
        timings: dict[str, list[float]] = {name: [] for name in sources}
        for _ in range(args.rounds):
            for name, source in sources.items():
                started = time.perf_counter()
                for index, batch in enumerate(batches):
                    loss = source.loss(network, batch, 0, index, method.loss)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                timings[name].append((time.perf_counter() - started) / len(images))

    uncached, cached = (statistics.median(timings[name]) for name in ("images", "cached"))
    print(f"{args.method}, {len(images)} images at {args.size} px, {args.threads} threads, {args.rounds} rounds")
    print(f"  from images:  {1000 * uncached:6.1f} ms per image per epoch")
    print(f"  from cache:   {1000 * cached:6.1f} ms per image per epoch  (speed-up x{uncached / cached:.2f})")
    print(f"  cache build:  {1000 * build:6.1f} ms per view, {args.views} views per image")
    saved = uncached - cached
    if saved > 0:
        print(f"  caching pays off from {args.views * build / saved:.1f} epochs on")


if __name__ == "__main__":
    main()
