"""The errors a user sees: ``ProqhaError`` ("the user asked for something we cannot do": one line, exit 2 in
the CLI), ``OptionError`` (one option's bad value, named as the API spells it; the CLI prints its flag) and
``ExportError`` (a graph that failed validation; nothing was written)."""


class ProqhaError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


class OptionError(ProqhaError, ValueError):
    """A bad value for one option. ``option`` is its name as the Python API spells it (``batch_size``); the
    message starts with that name, and the CLI prints it with the flag instead (``--batch-size``).
    ``others``: further options the detail names (as the API spells them), which the CLI shows as flags too.
    It is a ValueError too, as a bad argument to a config class should be."""

    def __init__(self, option: str, message: str, others: tuple[str, ...] = ()) -> None:
        super().__init__(f"{option} {message}")
        self.option = option
        self.detail = message
        self.others = others

    def with_flag(self, flags: dict[str, str] | None = None) -> str:
        """The message as the command line says it, each option named by its flag: ``--`` and the name with
        dashes, unless ``flags`` maps it to another (``{"source": "--from"}``)."""
        import re

        def flag(name: str) -> str:
            return (flags or {}).get(name) or "--" + name.replace("_", "-")

        detail = self.detail
        for name in self.others:
            detail = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flag(name), detail)
        return f"{flag(self.option)} {detail}"


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
