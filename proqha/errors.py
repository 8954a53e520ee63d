"""The one exception type that means "the user asked for something we cannot do"."""


class ProqhaError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""
