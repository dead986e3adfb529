"""The error types that the CLI turns into one red line and an exit code."""

# Every line break that splitlines() splits on, written as its escape: a problem stays one line
# whatever characters a bad key or value brought in.
_ONE_LINE = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


class DltrainError(Exception):
    """A problem the user can fix: bad input, missing files, absent device. The message is
    complete on its own (what, where, what to do); the CLI prints it without a traceback and
    exits with `exit_code`."""

    exit_code = 1
    all_ranks = False  # distributed: raised by every process at the same point (they can meet)


class ConfigError(DltrainError):
    """One or more problems in a config; every problem is one line of `lines`."""

    exit_code = 2

    def __init__(self, lines: list[str], source: str = "config"):
        self.lines = [line.translate(_ONE_LINE) for line in lines]
        self.source = source.translate(_ONE_LINE)
        super().__init__("\n".join(f"{self.source}: {line}" for line in self.lines))


class RunInUse(DltrainError):
    """A run folder another process is training in (its lock is held)."""

    exit_code = 2


class MissingExtra(DltrainError):
    """The config asks for something whose package is not installed (a tracker): the line
    names the extra to install. Found before any data is read."""

    exit_code = 2


class DataNotFound(DltrainError):
    """A dataset is not where the config points and was not downloaded: the one data error
    that a command able to do without the data (export's parity check) may catch."""


class Interrupted(DltrainError):
    """Training stopped on SIGINT/SIGTERM after saving a resumable checkpoint."""

    all_ranks = True  # the stop is agreed by all processes before anything is raised

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
