"""Small, fast training setups shared by the test_train*.py files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from safetensors.torch import save_file

from qdeploy.models.sources import load_base_model
from qdeploy.training import TrainConfig
from tests.conftest import FAMILIES

TINY = FAMILIES["depthwise-cnn"][0]


def tiny_checkpoint(folder: Path, name: str = TINY) -> Path:
    """Random 'pretrained' weights in a local file: adapt/finetune runs need no download."""
    path = folder / f"{name}.safetensors"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in load_base_model(name, pretrained=False).state_dict().items()}, path)
    return path


def tiny_config(tmp_path: Path, **overrides: Any) -> TrainConfig:
    """A run that takes seconds on one CPU core: tiny model, 32 px, a few dozen images."""
    settings: dict[str, Any] = dict(
        model=TINY, checkpoint=str(tiny_checkpoint(tmp_path / "weights")), out=str(tmp_path / "run"),
        mode="adapt", image_size=32, batch_size=16, max_samples=32, epochs=1, workers=0, progress=False,
        lr=5e-3, scheduler="constant", warmup_steps=0,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def write_image_folder(root: Path, classes: tuple[str, ...] = ("circle", "square", "stripes"),
                       per_class: int = 12, size: int = 24, seed: int = 0) -> Path:
    """A real ImageFolder of PNGs: each class a different noisy pattern."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    patterns = {
        "circle": ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.1).astype(float),
        "square": ((abs(yy - 0.5) < 0.25) & (abs(xx - 0.5) < 0.25)).astype(float),
        "stripes": (np.sin(xx * 20) > 0).astype(float),
        "dots": ((np.sin(xx * 25) > 0.5) & (np.sin(yy * 25) > 0.5)).astype(float),
    }
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            grey = np.clip(patterns[name] * 0.8 + rng.normal(0, 0.15, (size, size)), 0, 1)
            rgb = (np.stack([grey, grey * rng.uniform(0.5, 1), 1 - grey], -1) * 255).astype(np.uint8)
            Image.fromarray(rgb).save(root / name / f"{index}.png")
    return root
