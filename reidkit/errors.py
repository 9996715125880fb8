"""The one exception type for mistakes a user can make (bad path, key, layout, input)."""


class ReIDError(Exception):
    """A user-facing error: the message names the path or key and what was expected.

    The CLI prints it as ``error: <message>`` and exits with status 2, without a traceback.
    """
