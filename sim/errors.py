"""User-facing errors: each names the file and the field, and maps to an exit status."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (exit status 2).  ``str(err)`` is one line naming file and field."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        self.file, self.field, self.message = file, field, message
        where = ": ".join(x for x in (file, field) if x)
        super().__init__(f"{where}: {message}" if where else message)

    def at(self, *, file: str | None = None, field: str | None = None) -> UserError:
        """The same message, said of ``file`` and ``field`` instead (an error from a file or
        value a scenario names, reported at the scenario's field that names it)."""
        return UserError(self.message, file=file, field=field)


class BackendUnavailable(Exception):
    """A backend that cannot run on this machine (exit status 3); the message says why."""

    exit_code = 3


class PolicyFailure(RuntimeError):
    """A policy broke a run (a bug in the policy, exit status 1): the run ends there and every
    request not yet finished fails with this message as its reason."""


class InfeasibleDecision(PolicyFailure):
    """A policy returned a decision the engine cannot carry out."""


class PolicyRaised(PolicyFailure):
    """A policy's ``decide`` raised an exception."""
