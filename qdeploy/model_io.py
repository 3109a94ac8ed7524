"""What every stage agrees on about a model's input and output, in a neutral module.

The exporter names the ONNX graph's tensors, the engines take and give tensors of these
names, and data loading resizes to the model's input size; each of them imports the
names from here rather than from another stage (the dependency direction of the layout).
No torch import: runtime readers and the server import this cheaply.
"""

from __future__ import annotations

from typing import Any

INPUT_NAME, OUTPUT_NAME, BATCH_AXIS = "input", "output", "batch"
# ONNX metadata: quadratic layer -> the norm folded into it (written by the exporter, read by the drift localizer)
FOLDED_NORMS_KEY = "qdeploy.folded_norms"


def model_input_size(model: Any) -> tuple[int, int, int]:
    """(C, H, W) the model runs at: the ViT patch grid's size if fixed, else timm's data config."""
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        return (getattr(model.patch_embed.proj, "in_channels", 3), *img_size)
    from timm.data import resolve_model_data_config

    return tuple(resolve_model_data_config(model)["input_size"])  # type: ignore[return-value]
