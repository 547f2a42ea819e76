"""One base for every error mrgptq raises on bad input, so callers catch `MrgptqError` and the CLI prints
its message as one line. A ValueError subclass: bad input is a bad value."""


class MrgptqError(ValueError):
    """Bad input to mrgptq: the message names the problem and the fix."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (a library's multi-line error, shortened for ours)."""
    return (str(e).splitlines() or [type(e).__name__])[0][:200]
