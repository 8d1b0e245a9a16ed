"""PNG compression levels for the maps: encoding time and file size, side by side in one run.

    python benchmarks/png_compression.py [--maps DIR] [--sizes 288 1024 2048] [--rounds 5]

Maps are lossless at every level (zlib); only time and size change. The maps are real ones: those in
--maps (default: tests/data/reference_maps, what cosal's methods wrote for the example cats), resized
bilinearly to each size's longer side, as `cosal detect` writes them for photos of that size.
Prints milliseconds per map and kB per map for each level, and each level's ratios against level 6
(Pillow's default).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LEVELS = (1, 3, 6, 9)


def encode(values: np.ndarray, level: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=Path, default=REPO / "tests" / "data" / "reference_maps")
    parser.add_argument("--sizes", type=int, nargs="+", default=[288, 1024, 2048])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sources = [Image.open(path).convert("L") for path in sorted(args.maps.rglob("*.png"))]
    print(f"{len(sources)} maps from {args.maps}, median of {args.rounds} alternating rounds")
    print(f"{'side':>6}{'level':>7}{'ms per map':>12}{'kB per map':>12}{'time vs 6':>11}{'size vs 6':>11}")
    for side in args.sizes:
        maps = [np.asarray(image.resize((side, side * 3 // 4), Image.BILINEAR)) for image in sources]
        seconds: dict[int, list[float]] = {level: [] for level in LEVELS}
        sizes = {level: sum(len(encode(values, level)) for values in maps) / len(maps) for level in LEVELS}
        for _ in range(args.rounds):
            for level in LEVELS:  # alternating, so a busy machine slows every level alike
                tick = time.perf_counter()
                for values in maps:
                    encode(values, level)
                seconds[level].append((time.perf_counter() - tick) / len(maps))
        base_time, base_size = statistics.median(seconds[6]), sizes[6]
        for level in LEVELS:
            took = statistics.median(seconds[level])
            print(f"{side:>6}{level:>7}{took * 1000:>12.2f}{sizes[level] / 1000:>12.1f}{took / base_time:>10.2f}x"
                  f"{sizes[level] / base_size:>10.2f}x")


if __name__ == "__main__":
    main()
