"""The one error type users see: a bad value, named, with what is allowed."""


class ConfigError(ValueError):
    """Bad user input. The message is one line naming the value and what is allowed."""
