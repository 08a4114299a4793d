"""The one exception type that stage CLIs turn into a clear message and a non-zero exit."""


class WsssError(Exception):
    """A user-facing error: bad input, bad parameters, missing data. The message names the culprit."""
