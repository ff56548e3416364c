"""The one exception type users see: a single line saying what is wrong and how to fix it."""


class GrainError(Exception):
    """A user-facing error. The message is one line; the CLI prints it and exits with status 2."""

    def __init__(self, message: str) -> None:
        if "\n" in message:
            message = " ".join(part.strip() for part in message.splitlines() if part.strip())
        super().__init__(message)
