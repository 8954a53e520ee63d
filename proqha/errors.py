"""The one exception type that means "the user asked for something we cannot do"."""


class ProqhaError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


class OptionError(ProqhaError):
    """A bad value for one option. ``option`` is its name as the Python API spells it (``batch_size``); the
    message starts with that name, and the CLI prints it with the flag instead (``--batch-size``)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option} {message}")
        self.option = option
        self.detail = message

    def with_flag(self) -> str:
        """The message as the command line says it: the option's flag, then the detail."""
        return f"--{self.option.replace('_', '-')} {self.detail}"


class ExportError(ProqhaError):
    """The exported graph failed validation; nothing was written. ``report`` says what was measured."""

    def __init__(self, message: str, report: object) -> None:
        super().__init__(message)
        self.report = report


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most ``limit`` characters), with the line after it when
    it only introduces it (ends in a colon), or its type name when the message is empty: what a one-line
    error quotes of its cause."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    head = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return head[:limit]
