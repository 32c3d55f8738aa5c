"""The CLI's own error type: a failure a user can act on, printed as `grid: what: why`."""


class UserError(Exception):
    """A failure caused by the command's input or environment, not by a bug.

    The CLI prints it as one line, ``grid: <what>: <why>``, and exits non-zero without a
    traceback. ``what`` names the operation or object, ``why`` the reason.
    """

    def __init__(self, what: str, why: str, exit_code: int = 1) -> None:
        super().__init__(f"{what}: {why}")
        self.what = what
        self.why = why
        self.exit_code = exit_code
