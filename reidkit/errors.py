"""The one exception type for mistakes a user can make (bad path, key, layout, input)."""


class ReIDError(Exception):
    """A user-facing error: the message names the path or key and what was expected.

    The CLI prints it as ``error: <message>`` and exits with status 2, without a traceback.
    """


class NotFound(ReIDError):
    """A named thing (an id, a tracklet, a file) is absent. The HTTP service answers 404 with `public`,
    a message that names no server path (the CLI prints the full message)."""

    http_status = 404

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public or message
