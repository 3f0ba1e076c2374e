"""Errors that end a command or a process with one line saying what failed."""


class CommandFailed(Exception):
    """The command could not do its job: printed as one line, exit 1."""
