"""The one exception type that means "the user asked for something we cannot do"."""


class ProqhaError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type name when the
    message is empty: what a one-line error quotes of its cause."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
