"""What a training run consumes, by content: the fingerprint that makes a run's identity (relm.train.resume).

A run's inputs are {"vocab": path, "train"/"valid"/"test": {lang: corpus JSON}, "init": checkpoint, "extension":
sidecar}. Their fingerprint holds, for each, {"path", "sha256", "bytes"}: the sha256 of the file, for a corpus the
sha256 of the digests of its three files (the JSON and its .tok.npy / .off.npy arrays, relm.data.corpus). Only the
digests decide whether a checkpoint can be resumed (`identity`); the paths are kept so that a user sees what a run
consumed (inputs.json in the run directory) and the log can name what changed.

Cost: sha256_file took 1.3 s per GB (a 1 GB file in the page cache, one core with SHA extensions; disk reads add
to it); the log line of every start gives the figure of the machine it runs on. A digest is cached in the run
directory (digests.json) keyed by the file's (path, size, mtime_ns, inode): a resumed SLURM job re-hashes nothing
that did not change. A file rewritten in place with the same size and the same nanosecond mtime would be missed;
relm's own writers replace files atomically (relm.files), which gives a new inode.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from relm.errors import CheckpointError, InputError
from relm.files import atomic_write_text, sha256_file

CORPUS_ROLES = ("train", "valid", "test")


class DigestCache:
    """sha256 of files, remembered by (absolute path, size, mtime_ns, inode) in a JSON file."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict = {}
        if path is not None and path.is_file():
            try:
                self.entries = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):  # a damaged cache only costs hashing again
                self.entries = {}
        self.changed = False
        self.hashed_bytes = self.cached_bytes = 0
        self.hash_seconds = 0.0

    def sha256(self, file: Path) -> tuple[str, int]:
        st = file.stat()
        key = str(file.resolve())
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        e = self.entries.get(key)
        if isinstance(e, dict) and e.get("stat") == stamp and isinstance(e.get("sha256"), str):
            self.cached_bytes += st.st_size
            return e["sha256"], st.st_size
        t = time.perf_counter()
        digest = sha256_file(file)
        self.hash_seconds += time.perf_counter() - t
        self.hashed_bytes += st.st_size
        self.entries[key] = {"stat": stamp, "sha256": digest}
        self.changed = True
        return digest, st.st_size

    def save(self) -> None:
        if self.path is not None and self.changed:
            atomic_write_text(self.path, json.dumps(self.entries, indent=1, sort_keys=True) + "\n")
            self.changed = False

    def summary(self) -> str:
        gb = self.hashed_bytes / 1e9
        rate = f" = {self.hash_seconds / gb:.2f} s/GB" if gb > 0.01 else ""
        return (f"inputs fingerprinted (sha256): {_size(self.hashed_bytes)} hashed in {self.hash_seconds:.2f} s{rate}, "
                f"{_size(self.cached_bytes)} known from the digest cache")


def _size(n: int) -> str:
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def _missing(role: str, path: str):
    if role == "init":
        return CheckpointError(f"checkpoint {path} does not exist")
    return InputError(f"{role} input {path} does not exist")


def _files(role: str, path: str) -> list[Path]:
    p = Path(path)
    if role in CORPUS_ROLES:
        from relm.data.corpus import sibling_paths

        return [p, *sibling_paths(p)]
    return [p]


def _entry(role: str, path: str, cache: DigestCache) -> dict:
    files = _files(role, path)
    for f in files:
        if not f.is_file():
            raise _missing(role, str(f))
    digests = [cache.sha256(f) for f in files]
    if len(files) == 1:
        sha = digests[0][0]
    else:  # a corpus: one digest over the digests of its files, in a fixed order
        sha = hashlib.sha256("".join(f"{f.name[len(files[0].stem):]} {d}\n"
                                     for f, (d, _) in zip(files, digests)).encode()).hexdigest()
    return {"path": str(path), "sha256": sha, "bytes": sum(n for _, n in digests)}


def fingerprint(inputs: dict, cache: DigestCache) -> dict:
    """The fingerprint of a run's inputs ({role: path | {lang: path} | None}); missing files are an InputError
    (CheckpointError for init), naming the file."""
    out: dict = {}
    for role, value in sorted(inputs.items()):
        if value is None or value == "":
            out[role] = None
        elif isinstance(value, dict):
            out[role] = {lg: _entry(role, str(p), cache) for lg, p in sorted(value.items())}
        else:
            out[role] = _entry(role, str(value), cache)
    return out


def identity(fp) -> object:
    """The part of a fingerprint that decides whether a run can be resumed: the digests (not the paths). An entry
    that is a bare path (checkpoints written before fingerprints) stays a path, so it never equals a digest."""
    if isinstance(fp, dict):
        if "sha256" in fp and "path" in fp:
            return fp["sha256"]
        return {k: identity(v) for k, v in fp.items()}
    return None if fp is None else f"path:{fp}"


def describe(fp: dict, key: str) -> str:
    """'train.hx' -> 'train.hx (data/hx/bin/train.hx.json)' for log lines."""
    node = fp
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return f"{key} ({node['path']})" if isinstance(node, dict) and "path" in node else key

