"""The embedded demo zoo: a small timm ViT and ResNet trained on ``shapes``, with AdamW or SAM.

The trained weights ship inside the package (``vitprobe/models/zoo``: safetensors and a JSON
record of the recipe, seed, test accuracy and SHA-256), so no run trains anything. They are made
by this module's own deterministic training (``vitprobe models --retrain``, which trains into
``$VITPROBE_CACHE/demo``, default ``~/.cache/vitprobe/demo``, and reports the difference from the
shipped weights). A model whose recipe has no shipped weights is trained on first use and
cached there; a file lock makes concurrent processes train it once.

Sizes (zoo v2) are chosen so that maps mean something: 64-pixel images, an 8x8 patch grid for
the ViT, and a ResNet with output stride 16 (its last stage, the Grad-CAM layer, is 4x4).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitprobe.data.shapes import CLASS_NAMES, render_shapes
from vitprobe.models.sam_optimizer import SAM, frozen_batchnorm_stats
from vitprobe.progress import log, progress
from vitprobe.report.files import atomic_write, sha256_file, write_json

RESOLUTION = 64
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


@dataclass(frozen=True)
class DemoRecipe:
    """How one demo model is built and trained; its hash names the cached file."""

    architecture: str  # "vit" or "resnet"
    optimizer: str  # "adamw" or "sam"
    steps: int
    lr: float
    weight_decay: float = 0.05
    warmup: int = 50
    batch_size: int = 64
    train_images: int = 16000
    rho: float = 0.05
    seed: int = 0
    flip: bool = True  # random horizontal flips: the only augmentation
    version: int = 2

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


# AdamW and SAM take the same number of steps (SAM's cost twice as much), so that the
# sharpness comparison is not confounded by training length.
DEMO_ZOO: dict[str, DemoRecipe] = {
    "vit": DemoRecipe("vit", "adamw", steps=6000, lr=3e-3, warmup=100),
    "resnet": DemoRecipe("resnet", "adamw", steps=1500, lr=2e-3),
    "vit-sam": DemoRecipe("vit", "sam", steps=6000, lr=3e-3, warmup=100, rho=0.1),
    "resnet-sam": DemoRecipe("resnet", "sam", steps=1500, lr=2e-3, rho=0.1),
}
SHIPPED = Path(__file__).resolve().parent / "zoo"
# the model specs of the zoo (every command's default models), and each AdamW model with its
# SAM twin (same architecture and steps): the pairs the landscape and the demo study compare
DEMO_SPECS = tuple(f"demo:{name}" for name in DEMO_ZOO)
SAM_TWINS = tuple((f"demo:{base}", f"demo:{twin}")
                  for base, recipe in DEMO_ZOO.items() if recipe.optimizer == "adamw"
                  for twin, other in DEMO_ZOO.items()
                  if other.optimizer == "sam" and other.architecture == recipe.architecture)


def build_architecture(architecture: str) -> nn.Module:
    """The untrained timm module of a demo architecture."""
    model: nn.Module
    if architecture == "vit":
        model = VisionTransformer(img_size=RESOLUTION, patch_size=8, embed_dim=64, depth=4,
                                  num_heads=4, mlp_ratio=2.0, num_classes=len(CLASS_NAMES))
    elif architecture == "resnet":
        model = ResNet(BasicBlock, (1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=16,  # type: ignore[arg-type]  # timm's stub wants an instance
                       num_classes=len(CLASS_NAMES), output_stride=16)
    else:
        raise ValueError(f"unknown demo architecture {architecture!r}")
    cast(Any, model).pretrained_cfg = {
        "input_size": (3, RESOLUTION, RESOLUTION), "interpolation": "bilinear", "crop_pct": 1.0,
        "crop_mode": "center", "mean": MEAN, "std": STD, "num_classes": len(CLASS_NAMES),
        "classifier": "head" if architecture == "vit" else "fc",
    }
    return model


def cache_dir() -> Path:
    root = os.environ.get("VITPROBE_CACHE") or Path.home() / ".cache" / "vitprobe"
    return Path(root) / "demo"


def weights_path(name: str) -> Path:
    return cache_dir() / f"{name}-{DEMO_ZOO[name].digest()}.safetensors"


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images - mean) / std


def _lr_at(step: int, recipe: DemoRecipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress_ = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * progress_))


@torch.no_grad()
def test_accuracy(model: nn.Module, num_images: int = 1000) -> float:
    """Top-1 accuracy on the first ``num_images`` of the shapes test split."""
    test = render_shapes(list(range(num_images)), RESOLUTION, split="test")
    model.eval()
    logits = torch.cat([model(_normalise(test.images[i:i + 250])) for i in range(0, num_images, 250)])
    return float((logits.argmax(-1) == test.labels).float().mean())


def train(recipe: DemoRecipe, after_step: Callable[[int, nn.Module, float], object] | None = None
          ) -> tuple[nn.Module, dict[str, Any]]:
    """Train one demo model from scratch, deterministically for ``recipe.seed``; ``after_step``
    is called after each optimizer step with the number of steps taken, the model and the
    learning rate (``vitprobe track`` measures lambda_1 there)."""
    torch.manual_seed(recipe.seed)
    model = build_architecture(recipe.architecture)
    data = render_shapes(list(range(recipe.train_images)), RESOLUTION, split="train")
    images, labels = _normalise(data.images), data.labels
    generator = torch.Generator().manual_seed(recipe.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    optimizer: torch.optim.Optimizer
    if recipe.optimizer == "sam":
        optimizer = SAM(groups, torch.optim.AdamW, rho=recipe.rho, lr=recipe.lr)
    else:
        optimizer = torch.optim.AdamW(groups, lr=recipe.lr)
    model.train()
    started = time.perf_counter()
    order = torch.randperm(len(images), generator=generator)
    position = 0
    for step in progress(range(recipe.steps), desc=f"training demo {recipe.architecture}"):
        if position + recipe.batch_size > len(order):
            order, position = torch.randperm(len(images), generator=generator), 0
        index = order[position:position + recipe.batch_size]
        position += recipe.batch_size
        x, y = images[index], labels[index]
        if recipe.flip:
            flipped = torch.rand(len(x), generator=generator) < 0.5
            x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, recipe)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if recipe.optimizer == "sam":
            def closure() -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                with frozen_batchnorm_stats(model):
                    loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss
            optimizer.step(closure)
        else:
            optimizer.step()
        if after_step is not None:
            after_step(step + 1, model, _lr_at(step, recipe))
    seconds = time.perf_counter() - started
    model.eval()
    record = {"recipe": asdict(recipe), "train_seconds": round(seconds, 1),
              "test_accuracy": test_accuracy(model), "classes": list(CLASS_NAMES)}
    return model, record


def shipped_path(name: str) -> Path:
    return SHIPPED / f"{name}.safetensors"


def _record_matches(record_path: Path, name: str) -> bool:
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return False
    return record.get("recipe") == asdict(DEMO_ZOO[name])


def train_into(name: str, folder: Path, steps: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Train demo model ``name`` (``steps`` overrides the recipe's, for short checks) and write
    ``folder/<name>.safetensors`` with its JSON record (recipe, seed, test accuracy, SHA-256)."""
    recipe = DEMO_ZOO[name] if steps is None else replace(DEMO_ZOO[name], steps=steps)
    model, record = train(recipe)
    path = folder / f"{name}.safetensors"
    atomic_write(path, lambda tmp: save_file(model.state_dict(), str(tmp)))
    record["sha256"] = sha256_file(path)
    write_json(record, path.with_suffix(".json"))
    return path, record


def load_demo(name: str) -> tuple[nn.Module, dict[str, Any], Path]:
    """The trained demo model ``name``: the shipped weights when their recipe is the current one,
    else trained on first use and cached."""
    path = shipped_path(name)
    if not (path.exists() and _record_matches(path.with_suffix(".json"), name)):
        path = weights_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (path.exists() and _record_matches(path.with_suffix(".json"), name)):
                log(f"training demo:{name} (no shipped weights for its recipe; cached in {path.parent})")
                trained, record = train(DEMO_ZOO[name])
                atomic_write(path, lambda tmp: save_file(trained.state_dict(), str(tmp)))
                write_json({**record, "sha256": sha256_file(path)}, path.with_suffix(".json"))
    model = build_architecture(DEMO_ZOO[name].architecture)
    model.load_state_dict(load_file(str(path)))
    return model.eval(), json.loads(path.with_suffix(".json").read_text()), path
