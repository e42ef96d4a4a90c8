"""The one exception type a user sees: a message that says what was wrong and what to do."""


class InweightsError(Exception):
    """Bad input or state the user can act on. The CLI prints it without a traceback and exits 2."""
