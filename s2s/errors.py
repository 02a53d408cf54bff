"""The one error type a user of s2s sees: `UserError`.

A `UserError` says what is wrong with the user's input (a config key, a data source, a
checkpoint, a backbone id, a tracking store, a search space) and how to fix it. Command lines
print it as one line and exit 2. Any other exception is a bug in s2s (or in a library under
it) and keeps its traceback: that is why nothing here derives from ValueError, which torch and
friends raise for their own reasons.

The specific errors derive from it where they are raised (`ConfigError` in s2s/config.py,
`CheckpointError` in s2s/checkpoint.py, ...); this module only holds the base and the two that
have no better home.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; the message names the input and the fix."""


class UnknownNameError(UserError):
    """A name that is not in a registry (strategy, ASR backend, metric, preset)."""


class DataError(UserError):
    """A data source or dataset that cannot be used as given."""
