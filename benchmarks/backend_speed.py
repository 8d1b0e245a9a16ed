"""torch against onnxruntime, end to end (`cosal detect`), side by side in one run, alternating rounds.

    python benchmarks/backend_speed.py [--methods sod gicd] [--size 20] [--rounds 3] [--threads 2] [--device cpu]

Each round runs `cosal detect --json` on one group of --size example photos with each method and each
backend in turn (alternating, so a busy machine slows both alike), in fresh processes with the same
torch threads (onnxruntime's intra-op threads follow them). The graphs are exported and cached before
the first round. Prints the median images/s (the summary's, decode + compute + write) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from gicd_speed_memory import detect, make_group  # beside this script: its folder is on sys.path


def run(group: Path, out: Path, method: str, backend: str, device: str, threads: int) -> float:
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [*detect(group, out, method, device), "--backend", backend, "--overwrite"]
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
    return json.loads(result.stdout)["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["sod", "gicd"])
    parser.add_argument("--size", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    backends = ("torch", "onnxruntime")
    rates: dict[tuple[str, str], list[float]] = {(m, b): [] for m in args.methods for b in backends}
    with tempfile.TemporaryDirectory() as tmp:
        group = make_group(Path(tmp) / "group", args.size)
        for method in args.methods:  # exports and caches the graphs, warms the disk cache
            run(group, Path(tmp) / "warm", method, "onnxruntime", args.device, args.threads)
        for _ in range(args.rounds):
            for method in args.methods:
                for backend in backends:
                    rates[method, backend].append(run(group, Path(tmp) / "out", method, backend, args.device,
                                                      args.threads))  # fmt: skip
    print(f"{args.size}-image group, device {args.device}, {args.threads} threads, median of {args.rounds} rounds")
    print(f"{'method':<8}{'torch img/s':>13}{'onnxruntime img/s':>19}{'ratio':>8}")
    for method in args.methods:
        on_torch, on_onnx = (statistics.median(rates[method, backend]) for backend in backends)
        print(f"{method:<8}{on_torch:>13.2f}{on_onnx:>19.2f}{on_onnx / on_torch:>7.2f}x")


if __name__ == "__main__":
    main()
