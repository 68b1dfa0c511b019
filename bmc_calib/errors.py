"""The one exception type the library raises, with the exit code the CLI maps it to."""

from __future__ import annotations

#: Exit codes of the command line (DESIGN §8, README table).
EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_UNSUPPORTED_VERSION = 4
#: an unexpected failure (a bug): one line, ``--debug`` shows the traceback
EXIT_INTERNAL = 70
#: interrupted by SIGINT (Ctrl-C) / SIGTERM: 128 + the signal number; nothing was written
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class BMCError(Exception):
    """A problem a user can act on.

    The message is one line that names the file (when there is one), what is wrong and what
    to do. ``exit_code`` is the CLI exit code for it.
    """

    def __init__(self, message: str, *, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(BMCError):
    """Options that contradict each other or name things that do not exist (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=EXIT_USAGE)


class BadInputError(BMCError):
    """Unreadable or malformed input data (exit code 3)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=EXIT_BAD_INPUT)


class UnsupportedVersionError(BMCError):
    """A bundle of a major version this tool cannot read (exit code 4)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=EXIT_UNSUPPORTED_VERSION)
