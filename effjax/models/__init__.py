"""Models built from effjax layers."""

from effjax.models.reformer import ReformerConfig, ReformerLM, next_token_loss

__all__ = ["ReformerConfig", "ReformerLM", "next_token_loss"]
