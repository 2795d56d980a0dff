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


def one_line(message: object, limit: int | None = None) -> str:
    """message's text on one line (its lines and runs of spaces joined by single spaces), cut to limit characters."""
    text = " ".join(str(message).split()) or (type(message).__name__ if isinstance(message, BaseException) else "")
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def print_error(err: UserError) -> int:
    """Print `err` as one `error:` line on stderr; return the exit code for it."""
    print(f"error: {one_line(err)}", file=sys.stderr)
    return err.exit_code


def exit_code(command, *args) -> int:
    """Run command(*args): 0, or for a UserError its exit code, once printed as one line. Anything else propagates
    with its traceback."""
    try:
        command(*args)
    except UserError as err:
        return print_error(err)
    return 0


class OneLineParseErrors:
    """Mixed into an argument parser (argparse's or jsonargparse's): a parse error (unknown option, wrong type,
    missing or malformed config file) is one `error:` line on stderr and exit code 2."""

    def error(self, message: str, *args, **kwargs):
        sys.stderr.write(f"error: {one_line(message)} (see --help)\n")
        sys.exit(2)
