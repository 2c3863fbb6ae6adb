"""Training utilities: checkpoints (orbax)."""

from effjax.train.checkpoint import checkpoint_manager, restore, save

__all__ = ["checkpoint_manager", "restore", "save"]
