"""Mistakes a user can make, told apart from bugs.

The entry points print a `UserError` as one `error:` line and exit with code 2. Every other exception keeps its
traceback: a bug must look like a bug, not like a bad setting.
"""


class UserError(ValueError):
    """A setting, file or input the user can fix. The message names the value and says what to do."""
