"""User-facing errors: each names the file and the field, and maps to an exit status."""

from __future__ import annotations

# characters that end a line (str.splitlines), written escaped so an error stays one line
_LINE_BREAKS = {c: f"\\x{c:02x}" if c < 256 else f"\\u{c:04x}"
                for c in map(ord, "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")}


class UserError(Exception):
    """Bad input from the user (exit status 2).  ``str(err)`` is one line naming file and field
    (a line break in them written escaped); an error built by ``collect`` reports several, one
    such line each (``lines``)."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        self.file, self.field, self.message = file, field, message
        self.others: tuple[UserError, ...] = ()  # more errors reported with this one
        where = ": ".join(x for x in (file, field) if x)
        super().__init__((f"{where}: {message}" if where else message).translate(_LINE_BREAKS))

    def __str__(self) -> str:
        return "\n".join(self.lines)

    @property
    def errors(self) -> tuple[UserError, ...]:
        """Every error this one reports, itself (one line) first."""
        return (self._single(), *self.others)

    @property
    def lines(self) -> tuple[str, ...]:
        """One line per error: ``FILE: FIELD: message`` (either part absent when unknown)."""
        return tuple(str(e.args[0]) for e in self.errors)

    def _single(self) -> UserError:
        return self if not self.others else UserError(self.message, file=self.file,
                                                      field=self.field)

    @classmethod
    def collect(cls, errors: list[UserError]) -> UserError:
        """One error reporting all of ``errors`` (at least one), in order, each line once: its
        ``file``, ``field`` and ``message`` are the first's."""
        seen: dict[str, UserError] = {}
        for err in errors:
            for one in err.errors:
                seen.setdefault(str(one.args[0]), one)
        first, *rest = seen.values()
        out = cls(first.message, file=first.file, field=first.field)
        out.others = tuple(rest)
        return out

    def at(self, *, file: str | None = None, field: str | None = None) -> UserError:
        """The same message, said of ``file`` and ``field`` instead (an error from a file or
        value a scenario names, reported at the scenario's field that names it); every one of
        several."""
        return UserError.collect([UserError(e.message, file=file, field=field)
                                  for e in self.errors])


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
