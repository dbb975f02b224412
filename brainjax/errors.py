"""Errors a user can fix (bad config, missing file, unreadable input).

The launcher prints these as one clear message and exits non-zero instead of a traceback.
"""


class UserError(ValueError):
    """A problem with the user's config, files or data; the message says what to do."""
