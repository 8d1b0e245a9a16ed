"""End-to-end throughput of every method against its backbone's bound, side by side in one run.

    python benchmarks/throughput.py [--methods gicd sod ...] [--threads 2] [--device cpu] [--rounds 2]
                                    [--photos DIR] [--backend torch] [--precision fp32 bf16]
                                    [--decode pillow gpu] [--resize 224]

For each method: `cosal detect --json` (fresh process, decode + compute + PNG writing, weights loading
and verification included) on two groups of 20 photos and on one group of 100, after a warm-up run
(so SISM caches and exported graphs exist, as on a second run), in alternating rounds; the median
images/s of each. Beside it, measured in this process with the same threads: the backbone's forward
alone (VGG-16 conv layers or EfficientNet-Lite0 with its head, batch 8, 224 px, random input), the
faster of torch (channels-last) and onnxruntime. The ratio says how close a method is to one backbone
pass per image. Photos: the committed examples (288 x 288) repeated, or the images of --photos.
With ``--precision fp32 bf16`` each method also runs with `--precision bf16` in the same rounds, and its
bound is the backbone's forward under bfloat16 autocast (torch only). ``--decode pillow gpu`` adds
`--gpu-decode` runs (JPEGs decoded by nvJPEG; CUDA only), and ``--resize N`` re-encodes the photos as
N x N JPEGs first (the GPU target is stated for 224 px photos).

On a GPU (``--device cuda``) the backbone is timed with CUDA synchronisation after a warm-up; the
end-to-end figures come from `cosal detect --device cuda`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
METHODS = ("gicd", "sod", "icnet", "csmg-mask", "gs", "gwd", "csmg")
BACKBONE = {"gicd": "efficientnet-lite0"}  # every other method runs on vgg16-imagenet
BATCH = 8


def photos_in(source: Path = REPO / "examples" / "Image") -> list[Path]:
    """The JPEG and PNG photos under ``source`` (default: the committed examples), sorted."""
    return sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def resized_photos(photos: list[Path], folder: Path, size: int) -> list[Path]:
    """The photos re-encoded as ``size`` x ``size`` JPEGs (quality 90) in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True)
    resized = []
    for index, photo in enumerate(photos):
        with Image.open(photo) as image:
            target = folder / f"{index:04d}.jpg"
            image.convert("RGB").resize((size, size), Image.BILINEAR).save(target, quality=90)
        resized.append(target)
    return resized


def make_groups(folder: Path, photos: list[Path], sizes: list[int]) -> Path:
    """``folder/gNN/`` group folders of the given sizes, photos repeated in order."""
    taken = 0
    for index, size in enumerate(sizes):
        group = folder / f"g{index:02d}"
        group.mkdir(parents=True)
        for position in range(size):
            photo = photos[(taken + position) % len(photos)]
            shutil.copy(photo, group / f"{position:04d}{photo.suffix}")
        taken += size
    return folder


def detect_rate(images: Path, out: Path, run: tuple[str, str, str, str], args: argparse.Namespace) -> float:
    method, precision, decode, tta = run
    command = [sys.executable, "-m", "cosal_cli", "detect", str(images), "-o", str(out), "-m", method, "--device",
               args.device, "--backend", args.backend, "--threads", str(args.threads), "--offline", "--json",
               "--quiet", "--overwrite", "--precision", precision, "--batch-size", str(args.batch_size)]  # fmt: skip
    command += ["--gpu-decode"] if decode == "gpu" else []
    command += ["--tta", tta] if tta != "none" else []
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)["images_per_second"]


def backbone_rate(name: str, device: torch.device, threads: int, precision: str = "fp32") -> float:
    """Images/s of the backbone's forward alone: the faster of torch (channels-last) and onnxruntime (CPU);
    in bf16, torch under bfloat16 autocast."""
    module = _backbone(name).to(device, memory_format=torch.channels_last).eval()
    images = torch.rand(BATCH, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        rates = [BATCH / _median_seconds(lambda: module(images), device)]
    if device.type == "cpu" and precision == "fp32":
        rates.append(_onnxruntime_rate(module, images, threads))
    return max(rates)


def _backbone(name: str) -> torch.nn.Module:
    from cosal_cli.hub import WeightHub
    from cosal_cli.models.efficientnet_lite import EfficientNetLite0
    from cosal_cli.models.vgg import VGG16Features

    hub = WeightHub()
    if name == "efficientnet-lite0":
        return EfficientNetLite0.from_file(hub.resolve("efficientnet-lite0-imagenet", offline=True))
    features = VGG16Features.from_file(hub.resolve("vgg16-imagenet", offline=True))

    class Conv53(torch.nn.Module):  # the conv layers up to relu5_3, every tap the methods read on the way
        def __init__(self):
            super().__init__()
            self.features = features

        def forward(self, x):
            return self.features(x, taps=("relu5_3",))["relu5_3"]

    return Conv53()


def _median_seconds(run, device: torch.device, repeats: int = 5) -> float:
    def timed() -> float:
        tick = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - tick

    timed()  # warm-up
    return statistics.median(timed() for _ in range(repeats))


def _onnxruntime_rate(module: torch.nn.Module, images: torch.Tensor, threads: int) -> float:
    import onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "backbone.onnx"
        torch.onnx.export(module, (images.contiguous(),), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["features"])  # fmt: skip
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {"images": images.contiguous().numpy()}
        return BATCH / _median_seconds(lambda: session.run(None, feed), torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--decode", nargs="+", default=["pillow"], choices=["pillow", "gpu"])
    parser.add_argument("--tta", nargs="+", default=["none"], choices=["none", "flip"], help="cosal's --tta")
    parser.add_argument("--resize", type=int, help="re-encode the photos as N x N JPEGs first")
    parser.add_argument("--batch-size", type=int, default=8, help="cosal detect's --batch-size")
    parser.add_argument("--photos", type=Path, help="a folder of photos (default: the examples)")
    parser.add_argument("--quick", action="store_true", help="groups of 4, 4 and 8, one round (a smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as cosal sets it for its own processes
    source = args.photos or REPO / "examples" / "Image"
    photos = photos_in(source)
    device = torch.device(args.device)
    backbones = dict.fromkeys(BACKBONE.get(method, "vgg16") for method in args.methods)
    bounds = {(name, precision): backbone_rate(name, device, args.threads, precision)
              for name in backbones for precision in args.precision}  # fmt: skip
    sets = {"2 x 20": [20, 20], "1 x 100": [100]}
    if args.quick:
        sets, args.rounds = {"2 x 4": [4, 4], "1 x 8": [8]}, 1
    runs = [(method, precision, decode, tta) for method in args.methods for precision in args.precision
            for decode in args.decode for tta in args.tta]  # fmt: skip
    rates: dict[tuple[tuple[str, str, str, str], str], list[float]] = {(run, s): [] for run in runs for s in sets}
    with tempfile.TemporaryDirectory() as tmp:
        if args.resize:
            photos = resized_photos(photos, Path(tmp) / "resized", args.resize)
        folders = {label: make_groups(Path(tmp) / f"in{i}", photos, sizes) for i, (label, sizes) in
                   enumerate(sets.items())}  # fmt: skip
        for run in runs:  # warm-up: SISM caches, exported graphs, the disk cache
            detect_rate(next(iter(folders.values())), Path(tmp) / "out", run, args)
        for _ in range(args.rounds):
            for run in runs:
                for label, folder in folders.items():
                    rates[run, label].append(detect_rate(folder, Path(tmp) / "out", run, args))
    resized = f" re-encoded at {args.resize} x {args.resize}" if args.resize else ""
    print(f"device {args.device}, backend {args.backend}, {args.threads} threads, batch size {args.batch_size}, "
          f"median of {args.rounds} rounds, "
          f"{len(photos)} photos from {source}{resized}")  # fmt: skip
    print(f"backbone bound (batch {BATCH}, 224 px): " +
          ", ".join(f"{name} {precision} {rate:.1f} img/s" for (name, precision), rate in bounds.items()))  # fmt: skip
    small, large = sets
    print(f"{'method':<11}{'precision':>10}{'decode':>8}{'tta':>6}{small + ' img/s':>14}{large + ' img/s':>15}"
          f"{'backbone img/s':>16}{'ratio':>8}")  # fmt: skip
    for run in runs:
        method, precision, decode, tta = run
        bound = bounds[BACKBONE.get(method, "vgg16"), precision]
        few, many = (statistics.median(rates[run, label]) for label in sets)
        print(f"{method:<11}{precision:>10}{decode:>8}{tta:>6}{few:>14.2f}{many:>15.2f}{bound:>16.1f}"
              f"{few / bound:>8.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
