"""torch against onnxruntime, end to end (`cosal detect`), side by side in one run, alternating rounds.

    python benchmarks/backend_speed.py [--methods sod gicd] [--size 20] [--rounds 3] [--threads 2] [--device cpu]
                                       [--official]

Each round runs `cosal detect --json` on one group of --size example photos with each method and each
backend in turn (alternating, so a busy machine slows both alike), in fresh processes with the same
torch threads (onnxruntime's intra-op threads follow them). The graphs are exported and cached before
the first round. Prints the median images/s (the summary's, decode + compute + write) and the ratio.

``--official`` adds gicd-official and icnet-official on *random* weights in the official layout,
imported into a temporary COSAL_HOME (the official files cannot be downloaded; speed does not depend
on the values). Methods that use SISMs (icnet, icnet-official) read them from cosal's SISM cache
after the warm-up run, under both backends alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import yaml
from gicd_speed_memory import detect, make_group  # beside this script: its folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = ("gicd-official", "icnet-official")


def import_random_officials(home: Path) -> Path:
    """A COSAL_HOME linking the real cache's weights, with random official-format files imported; its manifest."""
    import torch
    from torchvision.models import vgg16

    from cosal_cli.hub import WeightHub, cache_home, sha256_file
    from cosal_cli.models.gicd import GINet
    from cosal_cli.models.icnet import ICNet

    (home / "weights").mkdir(parents=True)
    for path in (cache_home() / "weights").iterdir():
        (home / "weights" / path.name).symlink_to(path.resolve())
    files = home / "official"
    files.mkdir()
    torch.manual_seed(0)
    for name, network in (("gicd_ginet.pth", GINet()), ("vgg16-397923af.pth", vgg16(weights=None)),
                          ("ICNet_vgg16.pth", ICNet())):  # fmt: skip
        torch.save(network.state_dict(), files / name)
    manifest = yaml.safe_load((REPO / "weights_manifest.yaml").read_text())
    pin = manifest["components"]["vgg16-torchvision-imagenet"]["source"]["import"]
    co_classifier = files / "vgg16-397923af.pth"
    pin.update(sha256=sha256_file(co_classifier), size=co_classifier.stat().st_size)  # the random file's pin
    (home / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    os.environ["COSAL_MANIFEST"] = str(home / "manifest.yaml")
    hub = WeightHub(home=home)
    hub.import_file("icnet-official", files / "ICNet_vgg16.pth")
    hub.import_file("gicd-official-ginet", files / "gicd_ginet.pth")
    hub.import_file("vgg16-torchvision-imagenet", co_classifier)
    return home


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
    parser.add_argument("--official", action="store_true", help="add the official methods, on random weights")
    args = parser.parse_args()
    methods = args.methods + (list(OFFICIAL) if args.official else [])
    backends = ("torch", "onnxruntime")
    rates: dict[tuple[str, str], list[float]] = {(m, b): [] for m in methods for b in backends}
    with tempfile.TemporaryDirectory() as tmp:
        if args.official:
            os.environ["COSAL_HOME"] = str(import_random_officials(Path(tmp) / "home"))
        group = make_group(Path(tmp) / "group", args.size)
        for method in methods:  # exports and caches the graphs, warms the disk cache
            run(group, Path(tmp) / "warm", method, "onnxruntime", args.device, args.threads)
        for _ in range(args.rounds):
            for method in methods:
                for backend in backends:
                    rates[method, backend].append(run(group, Path(tmp) / "out", method, backend, args.device,
                                                      args.threads))  # fmt: skip
    print(f"{args.size}-image group, device {args.device}, {args.threads} threads, median of {args.rounds} rounds")
    print(f"{'method':<16}{'torch img/s':>13}{'onnxruntime img/s':>19}{'ratio':>8}")
    for method in methods:
        on_torch, on_onnx = (statistics.median(rates[method, backend]) for backend in backends)
        label = f"{method}*" if method in OFFICIAL else method
        print(f"{label:<16}{on_torch:>13.2f}{on_onnx:>19.2f}{on_onnx / on_torch:>7.2f}x")
    if args.official:
        print("* random weights in the official layout (same computation as the published files)")


if __name__ == "__main__":
    main()
