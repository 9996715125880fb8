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


class UnknownName(ReIDError):
    """A name no registry holds (``unknown backbone 'x'``): ``kind`` and ``name`` say which."""

    def __init__(self, message: str, kind: str = "", name: object = None) -> None:
        super().__init__(message)
        self.kind, self.name = kind, name


class OptionError(ReIDError):
    """A bad value of one named option. ``option`` is the Python parameter's name and the message names
    it so (``db: /x is not a gallery``); the CLI prints the flag of the verb that was run instead
    (``--db: /x is not a gallery``), so the library never speaks of flags a Python caller never gave.

    ``value``, when given, is shown beside the name (``nlist=64: ...``; on the CLI ``--nlist 64: ...``).
    """

    def __init__(self, option: str, message: str, *, value: object = None) -> None:
        self.option, self.value, self.detail = option, value, message
        super().__init__(self.render(option if value is None else f"{option}={value}"))

    def render(self, name: str) -> str:
        """The message with ``name`` (a parameter or a flag, with its value if any) in front."""
        return f"{name}: {self.detail}"

    def for_flag(self, flag: str) -> str:
        """The message as the CLI prints it, naming ``flag``."""
        return self.render(flag if self.value is None else f"{flag} {self.value}")
