"""One exception type for bad user input, so the CLI can print one clear sentence."""


class SpectraError(Exception):
    """A problem with what the user asked for, stated in one sentence."""
