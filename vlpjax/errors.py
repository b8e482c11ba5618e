"""The error a user can fix: the CLI prints its message on one line and exits with status 2.

Anything else is a bug and keeps its traceback. Subclasses name the kind of problem:
config.ConfigError, train.checkpoints.CheckpointMismatch, train.loop.NonFiniteError, ...
"""


class UserError(Exception):
    """A problem with the user's input, files or run, explained by the message alone."""


class InvalidInput(UserError, ValueError):
    """A value, file, dataset or checkpoint the user supplied cannot be used as it is."""
