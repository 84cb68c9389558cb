"""Run the CLI in-process (fast: no interpreter start) with its real exit codes and streams.

click's ``CliRunner`` streams are not terminals, so this is also how a CI log sees onnxprune.
"""

from __future__ import annotations

from dataclasses import dataclass

from click.testing import CliRunner

from onnxprune.cli import main


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


def invoke(*args: str) -> Ran:
    """``onnxprune ARGS`` through :func:`onnxprune.cli.main` (exit codes mapped as for users)."""
    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Ran(code, out.getvalue().decode(), err.getvalue().decode())
