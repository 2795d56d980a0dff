"""Mistakes a user can make, told apart from bugs.

The entry points print a `UserError` as one `error:` line and exit with its `exit_code` (2). Every other exception
keeps its traceback: a bug must look like a bug, not like a bad setting.
"""

import sys


class UserError(ValueError):
    """A setting, file or input the user can fix. The message names the value and says what to do."""

    exit_code = 2


class LossNotFinite(UserError):
    """The training loss became NaN or infinite: the settings did not train, though each was valid (exit code 1)."""

    exit_code = 1


def print_error(err: UserError) -> int:
    """Print `err` as one `error:` line on stderr; return the exit code for it."""
    one_line = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    print(f"error: {one_line}", file=sys.stderr)
    return err.exit_code
