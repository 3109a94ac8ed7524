"""The model store: every on-disk format qdeploy writes between its stages, one reader and one writer.

Each command takes what the previous one wrote, so they all resolve paths here:

    <run>/                 `qdeploy train --out <run>`; its model is <run>/model/
    <model folder>/        model.safetensors + adapter.json   (quadratic: base spec, quad config, targets)
                           model.safetensors + base.json      (plain: finetune, or lora with "lora" settings)
                           either JSON may carry "training": its TrainingRecord (data, classes,
                           image size, seed, val fraction: verify scores the held-out split only)
    <export folder>/       decomposed.onnx / fused.onnx + export_report.json (ExportReport; "source": the model)
    <file>.onnx / .plan    beside an export_report.json (a plan: beside engine.json naming its ONNX)

Each record is a typed dataclass of `qdeploy.store.artifacts` with one to_json / from_json.
`load(path)` takes any of these and returns a `Stored`: the model (built when a PyTorch
model is at hand) with its training record and export report. `save(model, folder)` writes a
model folder atomically. The store sits below training, export and runtime: it imports only
the layers, adaptation and model-source packages, so every stage can use it.
"""

from __future__ import annotations

from qdeploy.lazy import lazy_exports

# The layout (paths, JSON records) imports no torch; the models side does, on first use.
__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["ADAPTER_FILE", "BASE_FILE", "CHECKPOINT_DIR", "SUMMARY_FILE",
                     "EXPORT_MODES", "PLAN_INFO_FILE", "PLAN_SUFFIXES", "REPORT_FILE", "RUN_MODEL_DIR",
                     "WEIGHTS_FILE", "Stored", "is_model_folder", "locate", "model_config", "read_record",
                     "read_report", "write_report"], "layout"),
    **dict.fromkeys(["ExportReport", "ExportedFile", "PythonBackendParameters", "TrainingRecord", "VerifyReport"],
                    "artifacts"),
    **dict.fromkeys(["config_of", "inject_lora", "load", "load_model", "model_files", "save", "write_folder"],
                    "models"),
})
