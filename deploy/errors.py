"""The launcher's one error: what it explains to its user before exiting non-zero."""


class StackError(Exception):
    """A failure the launcher explains to its user and exits non-zero for."""
