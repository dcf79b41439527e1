"""ldfa: theory and simulation of learning with low-dimensional error feedback."""

__version__ = "0.1.0"
