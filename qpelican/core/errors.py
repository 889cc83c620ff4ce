"""User-facing errors.

A `QpelicanError` is a mistake the user can fix (bad recipe, bad file, bad input values).
The command line prints its message without a traceback and exits with status 2.
"""


class QpelicanError(Exception):
    """An error caused by user input; the message names the cause and the fix."""


class DataError(QpelicanError):
    """Bad input data: wrong file, key, shape or values."""


class RecipeError(QpelicanError):
    """A recipe that does not validate."""


class ExportError(QpelicanError):
    """A model the firmware exporter cannot handle."""
