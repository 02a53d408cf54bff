"""Writing a file so that a crash never leaves half of it: checkpoints, the prepared cache, inference
outputs. Readers see the old file or the new one, never a torn one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def fsync(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object], durable: bool = False) -> None:
    """`write(tmp)` to a temporary file beside `path`, then rename it to `path`; on failure the temporary
    file is removed and `path` is left as it was. durable: fsync the data before the rename, so that a
    power loss cannot leave the new name pointing at unwritten blocks (checkpoints)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        if durable:
            fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
