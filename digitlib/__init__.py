"""digitlib: the shared library of Digit Lab (data, model, training, evaluation, dashboard logic)."""

__version__ = "0.1.0"
