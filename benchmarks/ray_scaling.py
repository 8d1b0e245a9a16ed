"""The Ray runner's overhead against the local runner, side by side in one run.

    python benchmarks/ray_scaling.py [--method gicd] [--groups 20] [--images 7] [--rounds 2]

Starts a Ray cluster on this machine (`ray.init` here, one CPU per core; stopped at the end, other
clusters of the machine untouched; token authentication, the token passed on in the environment), then runs
`cosal detect --json` (fresh process each) on the same groups, in alternating rounds: the local runner
with 1 and 2 threads, and `--runner ray` with 1 and 2 workers of one thread each. Per setting, the
median of: images/s over the run's wall time (first group to last file; `run_s`), the start-up before
it (`weights_s`: for Ray, connecting and starting the actors, which load the method), and the whole
command's wall time. The overhead is the Ray run's wall time over the local run's with the same
threads, and the per-group overhead the difference divided by the number of groups. On a 2-core
machine two workers cannot beat two threads; the point is what the cluster machinery costs.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import REPO, make_groups, photos_in  # noqa: E402


def detect(inputs: Path, out: Path, method: str, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "cosal_cli", "detect", str(inputs), "-o", str(out), "-m", method, "--offline",
               "--json", "--quiet", "--overwrite", *extra]  # fmt: skip
    tick = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    summary = json.loads(result.stdout)
    summary["wall_s"] = time.perf_counter() - tick
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="gicd")
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--images", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})  # before Ray loads
    import ray

    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    settings = {
        "local, 1 thread": ["--threads", "1"],
        "ray, 1 worker": ["--runner", "ray", "--ray-address", address, "--workers", "1", "--threads", "1"],
        "local, 2 threads": ["--threads", "2"],
        "ray, 2 workers": ["--runner", "ray", "--ray-address", address, "--workers", "2", "--threads", "1"],
    }
    runs: dict[str, list[dict]] = {label: [] for label in settings}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            inputs = make_groups(Path(tmp) / "in", photos_in(), [args.images] * args.groups)
            detect(inputs, Path(tmp) / "out", args.method, settings["local, 1 thread"])  # warm-up: the disk cache
            for _ in range(args.rounds):
                for label, extra in settings.items():
                    runs[label].append(detect(inputs, Path(tmp) / "out", args.method, extra))
    finally:
        ray.shutdown()  # stops the cluster this process started
    report(runs, args)


def report(runs: dict[str, list[dict]], args: argparse.Namespace) -> None:
    images = args.groups * args.images
    print(f"{args.method}, {args.groups} groups of {args.images} images, median of {args.rounds} rounds")
    print(f"{'setting':<18}{'images/s':>10}{'run_s':>8}{'start-up s':>12}{'command s':>11}{'overhead':>10}"
          f"{'per group ms':>14}")  # fmt: skip
    medians = {label: {key: statistics.median(run["timings"][key] if key != "wall_s" else run[key] for run in found)
                       for key in ("run_s", "weights_s", "wall_s")} for label, found in runs.items()}  # fmt: skip
    for label, median in medians.items():
        local = medians["local, 1 thread" if "1" in label else "local, 2 threads"]
        overhead = median["run_s"] / local["run_s"] - 1
        per_group = 1000 * (median["run_s"] - local["run_s"]) / args.groups
        print(f"{label:<18}{images / median['run_s']:>10.2f}{median['run_s']:>8.2f}{median['weights_s']:>12.2f}"
              f"{median['wall_s']:>11.2f}{overhead:>10.1%}{per_group:>14.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
