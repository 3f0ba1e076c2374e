"""The worker's exceptions: one family, each ending a run request, a command or a process with one clear line."""


class WorkerError(Exception):
    """Base of every exception the worker raises on purpose; its message says what is wrong."""


class CommandFailed(WorkerError):
    """The command could not do its job: printed as one line, exit 1."""
