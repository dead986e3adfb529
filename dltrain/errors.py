"""The error types that the CLI turns into one red line and an exit code."""


class DltrainError(Exception):
    """A problem the user can fix: bad input, missing files, absent device.

    The message is complete on its own (what, where, what to do); the CLI prints it
    without a traceback and exits with `exit_code`.
    """

    exit_code = 1


class ConfigError(DltrainError):
    """One or more problems in a config; every problem is one line of `lines`."""

    exit_code = 2

    def __init__(self, lines: list[str], source: str = "config"):
        self.lines = lines
        self.source = source
        super().__init__("\n".join(f"{source}: {line}" for line in lines))
