"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """A bad spec, a missing or mismatched file, an unreadable image, a non-finite loss.

    The command line prints the message as one line on stderr and exits with status 2;
    library callers get the exception.
    """
