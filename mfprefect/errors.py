"""The exceptions mfprefect raises; only the CLI turns them into process exits."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .diagnostics import Diagnostic


class MfprefectError(Exception):
    """Base of every error mfprefect reports to a user; `exit_code` is what the CLI exits with."""

    exit_code = 3

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ManifestError(MfprefectError):
    """A manifest (or a flow, at export) has problems; carries every diagnostic found."""

    exit_code = 1

    def __init__(
        self, message: str, diagnostics: list[Diagnostic] | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint)
        self.diagnostics = list(diagnostics or [])


class UsageError(MfprefectError):
    """The command was called wrongly (missing file, bad option value)."""

    exit_code = 2


class RuntimeFailure(MfprefectError):
    """Something outside the manifest failed: a server, a step, a subprocess."""

    exit_code = 3


class PlanRejected(MfprefectError):
    """A saved plan that is not one, or no longer matches the server or the manifests."""

    exit_code = 1


def error_lines(exc: MfprefectError, prefix: str) -> list[str]:
    """An error as people read it: a manifest error's diagnostics, one line, then what to do."""
    lines = []
    if isinstance(exc, ManifestError) and exc.diagnostics:
        from .diagnostics import render

        lines.append(render(exc.diagnostics, "text"))
    lines.append(f"{prefix}{exc.message}")
    if exc.hint:
        lines.append(exc.hint)
    return lines
