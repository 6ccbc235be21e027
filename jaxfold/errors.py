"""The errors of a prediction run that the command line reports as one line."""

from __future__ import annotations


class InferenceError(RuntimeError):
    """A problem with the inputs or set-up of an inference run (one-line message)."""


class OutputExistsError(InferenceError):
    """A finished prediction is in the way and overwriting was not asked for."""
