"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(ValueError):
    """A bad spec, a missing or mismatched file, an unreadable image, a non-finite loss.

    The command line prints the message as one line on stderr and exits with status 2;
    library callers get the exception.
    """


def first_line(error: BaseException) -> str:
    """The first non-blank line of an exception's message ("" when it has none)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")


def require_finite(value: float, what: str = "the loss", where: str = "") -> float:
    """``value`` if finite; otherwise the user error every command gives for bad weights or data."""
    if value != value or value in (float("inf"), float("-inf")):
        raise UserError(f"{what} is not finite{where} ({value}): check the weights, the data and the labels")
    return value
