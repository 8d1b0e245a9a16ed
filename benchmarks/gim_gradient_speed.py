"""The GIM's gradient: autograd against the explicit rewrite, side by side in one run (alternating rounds).

    python benchmarks/gim_gradient_speed.py [--threads 2] [--rounds 5] [--chunk 8]

For cosal's Lite0 head (global pool + linear: W^T c / HW) and for the official GINet's VGG classifier
(fc8 -> fc7 -> fc6 with ReLU masks -> the adaptive average pool), at the sizes GICD runs them on a
224 px input (Lite0: 1280 x 7 x 7; official: conv5_3, 512 x 14 x 14), random weights (speed only).
Prints the median milliseconds per chunk of each and the ratio autograd / explicit.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(function, rounds: int) -> float:
    function()  # warm-up
    started = time.perf_counter()
    for _ in range(rounds):
        function()
    return (time.perf_counter() - started) / rounds * 1000


def main() -> None:
    from cosal_cli.models.efficientnet_lite import EfficientNetLite0
    from cosal_cli.models.gicd import GicdVGG, consensus_gradient, vgg_classifier_gradient
    from cosal_cli.models.gicd_lite import GicdLite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lite = GicdLite(EfficientNetLite0().eval()).eval()
    vgg = GicdVGG().eval()
    lite_features = torch.rand(args.chunk, 1280, 7, 7)
    vgg_features = torch.relu(torch.randn(args.chunk, 512, 14, 14))
    cases = {
        "Lite0 head": (lambda: consensus_gradient(lite.logits, lite_features, None),
                       lambda: lite.induce(lite_features, None)),
        "official VGG classifier": (lambda: consensus_gradient(vgg.logits, vgg_features, None),
                                    lambda: vgg_classifier_gradient(vgg.avgpool, vgg.classifier, vgg_features, None)),
    }  # fmt: skip
    print(f"threads {args.threads}, chunk {args.chunk}, {args.rounds} alternating rounds")
    print(f"{'':<26}{'autograd ms':>12}{'explicit ms':>12}{'ratio':>8}")
    for name, (autograd, explicit) in cases.items():
        times: dict[str, list[float]] = {"autograd": [], "explicit": []}
        for _ in range(args.rounds):
            times["autograd"].append(timed(autograd, 3))
            with torch.no_grad():
                times["explicit"].append(timed(explicit, 3))
        slow, fast = statistics.median(times["autograd"]), statistics.median(times["explicit"])
        print(f"{name:<26}{slow:>12.2f}{fast:>12.2f}{slow / fast:>8.2f}x")


if __name__ == "__main__":
    main()
