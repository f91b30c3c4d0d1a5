"""The one exception type users see as a message rather than a traceback."""


class NeroicError(Exception):
    """A problem the user can act on: bad input, a missing upstream stage, a full disk.

    The CLI prints its message (no traceback unless --debug) and exits with status 1.
    `hint` is an optional second line telling the user what to try.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\n  hint: {self.hint}" if self.hint else text
