"""Small file helpers with one home: atomic writes (every output of relm appears whole or not at all, so a killed job
never leaves half a file that a rerun would take as done), content digests and line counts."""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHUNK = 1 << 20


def _fsync_dir(path: Path) -> None:
    try:  # make the rename durable
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


@contextmanager
def atomic_output(path: str | Path, mode: str = "w", durable: bool = False) -> Iterator:
    """Open a hidden temp file next to `path`; rename it onto `path` only if the block finishes without error.
    Text mode is UTF-8 with LF line ends. durable=True fsyncs the file and its directory (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": "\n"}
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_output(path) as f:
        f.write(text)


def atomic_torch_save(obj, path: str | Path) -> None:
    """torch.save, durable (fsync'ed before the rename)."""
    import torch

    with atomic_output(path, "wb", durable=True) as f:
        torch.save(obj, f)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def count_lines(path: str | Path) -> int:
    """Number of lines ("\\n"-terminated, plus an unterminated last one)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")
