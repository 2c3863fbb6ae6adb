"""The packaged ListOps config (effjax/configs/listops.py); ``effjax train listops`` runs it."""

from effjax.configs.listops import MAX_TOKENS, config, for_variant

__all__ = ["MAX_TOKENS", "config", "for_variant"]
