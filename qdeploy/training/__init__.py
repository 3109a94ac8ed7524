"""Training: adapt, scratch and finetune runs on the built-in digits or an ImageFolder.

`train(TrainConfig(...))` is the API behind `qdeploy train`; see trainer.py for the loop,
config.py for every setting; model folders are `qdeploy.store`'s, checkpoints checkpointing.py's.
"""

from qdeploy.training.config import AUTO_LR, BUILTIN_DATA, MODES, TrainConfig
from qdeploy.training.probing import CatapultHook, auto_learning_rate
from qdeploy.training.trainer import StepHook, StepInfo, TrainResult, saved_config, train

__all__ = [
    "AUTO_LR",
    "BUILTIN_DATA",
    "CatapultHook",
    "MODES",
    "StepHook",
    "StepInfo",
    "TrainConfig",
    "TrainResult",
    "auto_learning_rate",
    "saved_config",
    "train",
]
