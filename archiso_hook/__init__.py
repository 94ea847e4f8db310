"""archiso-hook: the early-userspace boot hook of archiso-style live media."""

__version__ = "0.1.0"
