"""Where a backup lives: a local directory, or a URL of any filesystem pyarrow opens.

:meth:`BackupLocation.parse` takes a path (``/backups/monday``, ``~/bk``, ``file:///backups/monday``)
or a URL (``s3://bucket/prefix``, ``gs://bucket/prefix``, ``hdfs://...``; query options such as
``?endpoint_override=host:port&scheme=http`` for an S3-compatible server, credentials from
the usual environment of that filesystem) and answers through :mod:`pyarrow.fs`. A URL that
pyarrow cannot open is an :class:`~raykv.errors.InvalidRequestError` naming it, never a
local folder named after it.

Durability: on a local filesystem every file is fsynced before it is renamed into place,
and the manifest is written with :func:`~raykv.storage.replica_store.write_atomically`. On an
object store a file is one object, which appears whole or not at all once written; a file
still being streamed has a ``.part`` name until it is complete and checked.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import InvalidRequestError
from .replica_store import write_atomically

READ_PIECE = 1 << 20


class BackupLocation:
    """A directory on one filesystem (``fs``, a :class:`pyarrow.fs.FileSystem`) at ``root``;
    ``shown`` is how messages name it (a URL without its query, or a local path)."""

    def __init__(self, fs, root: str, shown: str, local: bool) -> None:
        self.fs, self.root, self.shown, self.local = fs, root, shown, local

    @classmethod
    def parse(cls, where: str | os.PathLike) -> "BackupLocation":
        """The location ``where`` names (see the module docstring)."""
        import pyarrow.fs as pafs

        text = os.fspath(where)
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequestError(f"a backup location must be a non-empty path or URL, got {where!r}")
        if "://" not in text:
            path = str(Path(text).expanduser().resolve())
            return cls(pafs.LocalFileSystem(), path, path, True)
        try:
            fs, root = pafs.FileSystem.from_uri(text)
        except Exception as e:  # noqa: BLE001 -- pyarrow raises ArrowInvalid, ValueError or OSError
            raise InvalidRequestError(f"backup location {text!r} cannot be opened: {e}") from None
        local = isinstance(fs, pafs.LocalFileSystem)
        root = root.rstrip("/") or "/"
        return cls(fs, root, root if local else text.split("?", 1)[0], local)

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    # -- what is there ----------------------------------------------------------------------
    def kind(self, name: str | None = None) -> str:
        """``"missing"``, ``"file"`` or ``"directory"``: the root, or ``name`` in it."""
        import pyarrow.fs as pafs

        kind = self.fs.get_file_info(self.root if name is None else self.path(name)).type
        return {pafs.FileType.File: "file", pafs.FileType.Directory: "directory"}.get(kind, "missing")

    def names(self) -> list[str]:
        """The names directly under the root (none if it does not exist)."""
        import pyarrow.fs as pafs

        if self.kind() != "directory":
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        return sorted(info.base_name for info in infos)

    # -- writing ------------------------------------------------------------------------------
    def make(self) -> None:
        self.fs.create_dir(self.root, recursive=True)

    def delete(self, name: str) -> None:
        if self.kind(name) == "file":
            self.fs.delete_file(self.path(name))

    def move(self, source: str, target: str) -> None:
        self.fs.move(self.path(source), self.path(target))

    @contextmanager
    def writing(self, name: str) -> Iterator[BinaryIO]:
        """A new file ``name`` to write; on a local filesystem flushed and fsynced when the block ends."""
        if self.local:
            with open(self.path(name), "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            return
        with self.fs.open_output_stream(self.path(name)) as f:
            yield f

    def write_whole(self, name: str, data: bytes) -> None:
        """Write ``name`` so that a reader sees it whole or not at all (the manifest)."""
        if self.local:
            write_atomically(Path(self.path(name)), data)
            return
        with self.fs.open_output_stream(self.path(name)) as f:
            f.write(data)

    # -- reading ------------------------------------------------------------------------------
    def read(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.read()

    def digest(self, name: str) -> tuple[int, str]:
        """``(size, sha256 hex)`` of file ``name``, read in pieces."""
        h, size = hashlib.sha256(), 0
        with self.fs.open_input_stream(self.path(name)) as f:
            while piece := f.read(READ_PIECE):
                h.update(piece)
                size += len(piece)
        return size, h.hexdigest()

    def parquet(self, name: str):
        """File ``name`` as a :class:`pyarrow.parquet.ParquetFile`."""
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.path(name), filesystem=self.fs)
