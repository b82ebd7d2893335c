"""The error raised for bad input files (wrong encoding, misaligned corpora, bad vocabularies, failed downloads)."""
import sys


class InputError(ValueError):
    """Input data that relm cannot use; the message names the file (and line) and says what is wrong."""


def eprint(*args) -> None:
    """Default `log` callable of the text/data functions: print to stderr (stdout may be a data stream)."""
    print(*args, file=sys.stderr, flush=True)
