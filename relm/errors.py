"""The errors relm reports to a user as one line, without a traceback. Torch-free: the CLI imports this module to
catch them by type, also in the light commands (tokenize, bpe, ...) that never load torch."""
import sys


class RelmError(Exception):
    """Base class: the message names the file, line or config key and says what is wrong."""


class InputError(RelmError, ValueError):
    """Input data that relm cannot use (encoding, misaligned corpora, bad vocabularies, failed downloads)."""


class ConfigError(RelmError, ValueError):
    """A setting that cannot work; the message names the config key (also kept as `key`, relative to the part of
    the config that was checked, so that a caller can name the section the value came from)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class CheckpointError(RelmError, RuntimeError):
    """A checkpoint file is missing, truncated, corrupt, unsafe, or does not match the model/dictionary."""


class NonFiniteLossError(RelmError, RuntimeError):
    """Too many consecutive optimizer steps had a NaN/inf loss or gradient."""


def eprint(*args) -> None:
    """Default `log` callable of the text/data functions: print to stderr (stdout may be a data stream)."""
    print(*args, file=sys.stderr, flush=True)
