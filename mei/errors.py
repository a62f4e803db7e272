"""Errors raised for input a user can correct."""


class ConfigurationError(ValueError):
    """A method configuration or a component in it cannot be used as given."""


class GradientError(RuntimeError):
    """The model's output does not depend differentiably on its input."""
