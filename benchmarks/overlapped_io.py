"""Where a run's time goes, and how much of its file reading and writing hides behind the computation.

    python benchmarks/overlapped_io.py [--methods gicd sod] [--threads 2] [--rounds 2] [--size 2400x1600]

`cosal detect --json` (fresh process) on two groups of 20 photos: the committed examples as they are
(288 x 288), and the same photos enlarged to --size and stored as JPEG (quality 90), as a camera's would
be. Per method and set, the median over alternating rounds of the run's own timings: decoding (decode
threads), computing (main thread), bringing maps to size and encoding and writing files (writer
threads), their sum (what a run doing one after the other would take, at these stage times), the
run's wall time from the first decode to the last file, and how long the main thread waited for the
decoders and the writers. A wall time near the compute time means the I/O is hidden; the waits left
are the first group's decoding and the last group's writing, which nothing can overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import REPO, make_groups, photos_in  # noqa: E402

STAGES = ("decode_s", "compute_s", "write_s", "run_s", "decode_wait_s", "write_wait_s")


def enlarged(photos: list[Path], folder: Path, size: tuple[int, int]) -> list[Path]:
    folder.mkdir(parents=True)
    out = []
    for photo in photos:
        target = folder / f"{photo.stem}.jpg"
        Image.open(photo).convert("RGB").resize(size, Image.BICUBIC).save(target, quality=90)
        out.append(target)
    return out


def timings(images: Path, out: Path, method: str, threads: int) -> dict[str, float]:
    command = [sys.executable, "-m", "cosal_cli", "detect", str(images), "-o", str(out), "-m", method, "--threads",
               str(threads), "--offline", "--json", "--quiet", "--overwrite"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(result.stdout)["timings"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["gicd", "sod", "csmg-mask"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", default="2400x1600", help="the enlarged photos' WIDTHxHEIGHT")
    parser.add_argument("--quick", action="store_true", help="groups of 3, one round, 640x480 (a smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.size = 1, "640x480"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    width, height = (int(part) for part in args.size.split("x"))
    photos = photos_in()
    sizes = [3, 3] if args.quick else [20, 20]
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"examples": make_groups(Path(tmp) / "small", photos, sizes),
                args.size: make_groups(Path(tmp) / "large", enlarged(photos, Path(tmp) / "big", (width, height)),
                                       sizes)}  # fmt: skip
        for method in args.methods:  # warm-up: SISM caches, the disk cache
            timings(sets["examples"], Path(tmp) / "out", method, args.threads)
        runs: dict[tuple[str, str], list[dict[str, float]]] = {(m, s): [] for m in args.methods for s in sets}
        for _ in range(args.rounds):
            for method in args.methods:
                for label, folder in sets.items():
                    runs[method, label].append(timings(folder, Path(tmp) / "out", method, args.threads))
    print(f"{args.threads} threads, 2 groups of {sizes[0]}, median of {args.rounds} rounds (seconds)")
    print(f"{'method':<11}{'photos':<11}{'decode':>8}{'compute':>9}{'write':>8}{'sum':>8}{'wall':>8}"
          f"{'waits':>13}{'sum/wall':>10}")  # fmt: skip
    for (method, label), measured in runs.items():
        stage = {key: statistics.median(run[key] for run in measured) for key in STAGES}
        serial = stage["decode_s"] + stage["compute_s"] + stage["write_s"]
        waits = f"{stage['decode_wait_s']:.2f}+{stage['write_wait_s']:.2f}"
        print(f"{method:<11}{label:<11}{stage['decode_s']:>8.2f}{stage['compute_s']:>9.2f}{stage['write_s']:>8.2f}"
              f"{serial:>8.2f}{stage['run_s']:>8.2f}{waits:>13}{serial / stage['run_s']:>10.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
