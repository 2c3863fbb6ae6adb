"""Training: configs, the resumable loop, checkpoints (orbax), sharding, the train command."""

from effjax.train.checkpoint import checkpoint_manager, restore, save
from effjax.train.config import (
    DataConfig,
    ExperimentConfig,
    OptimizerConfig,
    RunConfig,
    load_config,
    packaged_configs,
    resolve_config,
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
    "checkpoint_manager",
    "classification_loss",
    "evaluate",
    "init_state",
    "load_config",
    "make_eval_step",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "packaged_configs",
    "resolve_config",
    "restore",
    "save",
    "train",
]
