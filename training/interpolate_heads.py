"""Average a head with its fine-tuned self, weight by weight (WiSE-FT, Wortsman et al., CVPR 2022).

    python training/interpolate_heads.py START.safetensors TUNED.safetensors --alpha 0.5 -o HEAD.safetensors

TUNED is START fine-tuned by ``cosal train --init START``; the result is ``(1 - alpha) * START + alpha *
TUNED``. Fine-tuning on new data can cost some groups what it gains on others; the average keeps most
of the gain and little of the loss. How the shipped ``icnet-head`` was made is in the README.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cosal_cli.hub import sha256_file
from cosal_cli.models.heads import interpolate_heads, load_head, load_tensors, save_tensors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("start", type=Path)
    parser.add_argument("tuned", type=Path)
    parser.add_argument("--alpha", type=float, required=True, help="weight of TUNED, in [0, 1]")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        tuned = load_tensors(args.tuned)
        # START must be a cosal head of TUNED's method; interpolate_heads checks that TUNED matches it
        start = load_head(args.start, tuned.metadata.get("method"))
        sources = tuple({"file": path.name, "sha256": sha256_file(path)} for path in (args.start, args.tuned))
        head = interpolate_heads(start, tuned, args.alpha, sources)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    save_tensors(args.output, head.tensors, head.metadata)
    weights = f"{1 - args.alpha:g} x {args.start.name} + {args.alpha:g} x {args.tuned.name}"
    print(f"wrote {args.output}: {head.metadata['method']} head, {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
