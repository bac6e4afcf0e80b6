"""``InputError``: the user's files or settings are wrong (the command line exits with code 2)."""

from __future__ import annotations

from hetsurgery.errors import ExportError, InvalidInput


class InputError(ExportError, InvalidInput):
    """A file, checkpoint, package or config the user gave cannot be used as it is; the message says why."""
