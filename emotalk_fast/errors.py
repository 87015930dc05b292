"""The library's errors about what its user gave it: the message says what was wrong and what is
expected. They are ValueError / TypeError too, so callers catch them as usual; the CLI prints them
as one line, and any other exception is a bug that keeps its traceback."""


class UserError(Exception):
    """Bad input, a bad option or a bad file from the user (never a bug in the library)."""


class InvalidInput(UserError, ValueError):
    """A value the library cannot take: wrong shape, rate, range, option or file content."""


class InvalidType(UserError, TypeError):
    """A value of a type the library does not take."""


class MissingProgram(UserError, RuntimeError):
    """A program the library runs (espeak-ng) is not installed: the message says how to install it."""
