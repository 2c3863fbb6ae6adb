"""Training: configs, the resumable loop, sharding over device meshes, the train command."""

from effjax.train.config import (
    DataConfig,
    ExperimentConfig,
    OptimizerConfig,
    RunConfig,
    load_config,
)
from effjax.train.loop import (
    TrainState,
    classification_loss,
    evaluate,
    init_state,
    make_eval_step,
    make_optimizer,
    make_schedule,
    make_train_step,
    train,
)

__all__ = [
    "DataConfig",
    "ExperimentConfig",
    "OptimizerConfig",
    "RunConfig",
    "TrainState",
    "classification_loss",
    "evaluate",
    "init_state",
    "load_config",
    "make_eval_step",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "train",
]
