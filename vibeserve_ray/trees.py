"""How candidate trees travel: as tar bytes through Ray's object store, never a shared filesystem.

The driver packs a parent (`RunRepo.archive`), the inner loop unpacks it wherever it
landed and packs the candidate it made for the trip back; the driver alone writes git.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def extract_tree(data: bytes, dest: Path) -> Path:
    """Unpacks tar bytes from `RunRepo.archive` (on whichever node the work landed)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def pack_dir(directory: Path) -> bytes:
    """A candidate directory as tar bytes, for the trip back to the driver."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(Path(directory).rglob("*")):
            if "__pycache__" in p.parts or p.suffix == ".pyc":
                continue
            tar.add(p, arcname=str(p.relative_to(directory)), recursive=False)
    return buf.getvalue()
