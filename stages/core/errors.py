"""The one error type the CLI turns into a readable paragraph instead of a traceback."""


class PipelineError(Exception):
    """A problem the user can fix: bad config, missing input, failed tool. The message says what and where."""


class ConfigError(PipelineError):
    """A config file is malformed, has an unknown key, or a value of the wrong type."""
