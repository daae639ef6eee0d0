"""Errors raised at the public boundary."""


class C2TInputError(ValueError):
    """Bad input from the user: a file, column, gene or parameter that cannot be used.

    The message names the offending thing; the CLI prints it on one line and exits non-zero.
    """
