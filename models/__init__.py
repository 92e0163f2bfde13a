"""Model zoo: every architecture is built by name with ``build_model``."""
from models.zoo import ARCHS, build_model

__all__ = ["ARCHS", "build_model"]
