"""Which ImageNet classifier for cosal's GICD: the training-free GIM CAM of each candidate, scored.

    python benchmarks/gicd_classifier_choice.py --data ../shared/data --split training/splits/shared-v1.yaml \
        [--composites composites/shared-v1] [--limit N] [--epochs 40]

GICD's consensus and gradient need a classifier with its 1000-class head; the decoder then refines the
class-activation map (CAM) the gradient gives. This scores that CAM alone (upsampled to the image size,
pysodmetrics protocol) on the split's held-out images, and on a composite set if given
(``benchmarks/make_composites.py``), for:

* (a) EfficientNet-Lite0 with the GIM on its last conv (1280 channels), on the stride-32 block output
  (320) and on the stride-16 block output (112);
* (b) VGG-16 relu5_3 with a classifier head distilled from Lite0's logits on the split's training
  images (pool, 1x1 conv to 1024, ReLU, average, linear; KL at T = 2), with its agreement with Lite0.

Needs the cached `vgg16-imagenet` and `efficientnet-lite0-imagenet`. The full run (all 4,234 images
of ../shared/data through VGG-16) takes about 45 minutes on a 2-core CPU; --limit N keeps N images per
group for a quick check.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cosal_cli import datasets, metrics, splits
from cosal_cli.hub import WeightHub
from cosal_cli.models.efficientnet_lite import EfficientNetLite0, lite_normalise
from cosal_cli.models.gicd import consensus_gradient, gradient_cam
from cosal_cli.models.vgg import VGG16Features, imagenet_normalise

SIZE = 224
#: Lite0 GIM layers: name -> index of the block whose output takes the gradient (None: the head conv).
LITE_LAYERS = {
    "lite0 last conv (1280)": None,
    "lite0 block 15 (320, stride 32)": 15,
    "lite0 block 10 (112, stride 16)": 10,
}


class DistilledHead(nn.Module):
    """(b): an ImageNet head on VGG-16 relu5_3 whose gradient still varies over positions."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(512, 1024, 1)
        self.fc = nn.Linear(1024, 1000)

    def forward(self, relu5_3: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(F.max_pool2d(relu5_3 / 100.0, 2)))  # Keras VGG activations are on a 0..255 scale
        return self.fc(x.mean(dim=(2, 3)))


def load_groups(dataset: datasets.Dataset, limit: int) -> list[tuple[str, list[datasets.Item]]]:
    return [(f"{dataset.name}/{group.name}", group.items[:limit] if limit else group.items) for group in dataset.groups]


def pixels(items: list[datasets.Item]) -> torch.Tensor:
    rgb = [np.asarray(Image.open(item.image).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)) for item in items]
    return torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 255


def logits_after(lite: EfficientNetLite0, x: torch.Tensor, block: int) -> torch.Tensor:
    """ImageNet logits from the output of block ``block``: the rest of the network."""
    for later in lite._blocks[block + 1 :]:
        x = later(x)
    return lite.classify(lite.head_features(x))


def lite_cam(lite: EfficientNetLite0, images: torch.Tensor, block: int | None, consensus: torch.Tensor) -> torch.Tensor:
    last = len(lite._blocks) - 1
    with torch.no_grad():
        x, _ = lite.blocks_until(lite_normalise(images), last if block is None else block, taps=())
        features = lite.head_features(x) if block is None else x
    classify = lite.classify if block is None else (lambda leaf: logits_after(lite, leaf, block))
    return gradient_cam(features, consensus_gradient(classify, features, consensus))[1]


def vgg_cam(head: DistilledHead, relu5_3: torch.Tensor, consensus: torch.Tensor) -> torch.Tensor:
    return gradient_cam(relu5_3, consensus_gradient(head, relu5_3, consensus))[1]


def score(accumulator: metrics.MetricAccumulator, group: str, items, cams: torch.Tensor) -> None:
    for item, cam in zip(items, cams):
        mask = np.asarray(Image.open(item.mask).convert("L"))
        full = F.interpolate(cam[None], size=mask.shape, mode="bilinear", align_corners=False)[0, 0]
        accumulator.add(group, metrics.evaluate_pair(full.mul(255).round().clamp(0, 255).to(torch.uint8).numpy(), mask))


def distil(vgg: VGG16Features, lite: EfficientNetLite0, train_groups, epochs: int) -> DistilledHead:
    features, targets = [], []
    with torch.no_grad():
        for _, items in train_groups:
            for chunk in range(0, len(items), 16):
                batch = pixels(items[chunk : chunk + 16])
                features.append(vgg(imagenet_normalise(batch), taps=("relu5_3",))["relu5_3"].half())
                targets.append(lite(lite_normalise(batch)))
    features, targets = torch.cat(features), torch.cat(targets)
    torch.manual_seed(0)
    head = DistilledHead()
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-2)
    for epoch in range(epochs):
        order = torch.randperm(len(features))
        for start in range(0, len(order), 64):
            index = order[start : start + 64]
            x = features[index].float()
            x = x.flip(-1) if epoch % 2 else x
            loss = F.kl_div(F.log_softmax(head(x) / 2, 1), F.softmax(targets[index] / 2, 1), reduction="batchmean") * 4
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return head.eval()


def evaluate(name: str, groups, lite, vgg, head) -> None:
    accumulators = {layer: metrics.MetricAccumulator() for layer in [*LITE_LAYERS, "vgg16 + distilled head"]}
    agree = total = 0
    for group, items in groups:
        images = pixels(items)
        with torch.no_grad():
            lite_logits = lite(lite_normalise(images))
            relu5_3 = vgg(imagenet_normalise(images), taps=("relu5_3",))["relu5_3"]
            head_logits = head(relu5_3)
        agree += int((lite_logits.argmax(1) == head_logits.argmax(1)).sum())
        total += len(items)
        lite_consensus = torch.softmax(lite_logits.sum(0, keepdim=True), 1)
        for layer, block in LITE_LAYERS.items():
            score(accumulators[layer], group, items, lite_cam(lite, images, block, lite_consensus))
        head_consensus = torch.softmax(head_logits.sum(0, keepdim=True), 1)
        score(accumulators["vgg16 + distilled head"], group, items, vgg_cam(head, relu5_3, head_consensus))
    print(f"\n{name}: {total} images; distilled head's top-1 = Lite0's on {agree / total:.1%}")
    print(f"{'GIM on':<34} {'S':>6} {'max F':>6} {'AUC':>6} {'MAE':>6}")
    for layer, accumulator in accumulators.items():
        result = accumulator.summary()
        print(f"{layer:<34} {result['sm']:>6.3f} {result['max_fm']:>6.3f} {result['auc']:>6.3f} {result['mae']:>6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of dataset folders")
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--composites", type=Path, help="a composite set from make_composites.py")
    parser.add_argument("--limit", type=int, default=0, help="images per group (0: all)")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    hub = WeightHub()
    lite = EfficientNetLite0.from_file(hub.resolve("efficientnet-lite0-imagenet", offline=True))
    vgg = VGG16Features.from_file(hub.resolve("vgg16-imagenet", offline=True)).eval()
    split = splits.load_split(args.split)
    train_groups, held_out_groups = [], []
    for folder in sorted(path for path in args.data.iterdir() if (path / "GroundTruth").is_dir()):
        dataset = datasets.locate(folder.name, args.data)
        held_out = splits.held_out_part(dataset, split)
        held_out_keys = {item.key for item in held_out.items}
        for group in dataset.groups:
            kept = [item for item in group.items if item.key not in held_out_keys]
            if kept:
                train_groups.append((f"{dataset.name}/{group.name}", kept[: args.limit] if args.limit else kept))
        held_out_groups += load_groups(held_out, args.limit)
    head = distil(vgg, lite, train_groups, args.epochs)
    evaluate("held-out", held_out_groups, lite, vgg, head)
    if args.composites:
        evaluate("composites", load_groups(datasets.locate(args.composites.name, args.composites.parent), args.limit),
                 lite, vgg, head)  # fmt: skip


if __name__ == "__main__":
    main()
