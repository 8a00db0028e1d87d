"""The one error type for bad input anywhere in glimpse.

Every message follows one shape: what was expected, what came, and how to fix it.
The CLI prints it as a single line and exits with status 2; the service reports it
and keeps running.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from a user: a file, an option, a configuration, a stream."""

    def __init__(self, expected: str, got: str, fix: str):
        self.expected, self.got, self.fix = expected, got, fix
        super().__init__(f"expected {expected}; got {got}. Fix: {fix}")

    def __reduce__(self):  # pickled with its three parts (from worker processes)
        return type(self), (self.expected, self.got, self.fix)

