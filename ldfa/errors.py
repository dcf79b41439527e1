"""The one error type users see (defined in the theory layer, the base of the package)."""

from .theory.errors import ConfigError  # noqa: F401
