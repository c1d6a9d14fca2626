"""One error type for bad user input, so entry points can print one clear line."""


class RqsidError(ValueError):
    """A problem with the user's input (file, line, item, config); the message is one line."""


class DataError(RqsidError):
    """Malformed or inconsistent data files."""


class ConfigError(RqsidError):
    """A config value that cannot work with the data or the model."""


class TrainingError(RqsidError):
    """Training stopped (non-finite loss or inputs); the last good checkpoint is kept."""


class StorageError(RqsidError):
    """The workdir could not be written (full disk, read-only file system); what was already
    written there is kept."""
