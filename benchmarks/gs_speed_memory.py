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

from gicd_speed_memory import parse_arguments  # beside this script: its folder is on sys.path
from gwd_speed_memory import beside_sod

if __name__ == "__main__":
    beside_sod("gs", parse_arguments(__doc__))
