"""The packaged smoke config (effjax/configs/smoke.py); ``effjax train smoke`` runs it by name."""

from effjax.configs.smoke import config

__all__ = ["config"]
