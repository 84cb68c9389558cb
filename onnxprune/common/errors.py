"""Exceptions that carry the CLI's exit code.

The CLI promises one-line messages and stable exit codes (0 done, 1 internal error, 2 bad usage or
bad input, 3 target not reachable). Library code raises these; only ``cli.py`` turns them into
messages, so the library stays usable from Python with ordinary exceptions.
"""

from __future__ import annotations


class OnnxPruneError(Exception):
    """Base class of every error onnxprune raises on purpose."""

    exit_code = 1


class UserError(OnnxPruneError, ValueError):
    """The input or the options are wrong; the message tells the user what to change."""

    exit_code = 2


class TargetUnreachableError(OnnxPruneError):
    """The requested speedup cannot be met; the message says the bound and what limits it.

    ``report`` carries what the run learned (bound, rounds, fidelity at the target, the fastest
    model within the bound) when there is one, so ``--json`` can still be written.
    """

    exit_code = 3

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report
