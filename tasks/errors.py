"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class LayercutError(Exception):
    """A problem with the user's input (config, model, data) that they can fix.

    The message must name the problem in one line; the CLI prints it without a traceback.
    """
