"""Writes files into its temporary directory until the disk is full: only its private,
size-limited /tmp may fill."""

import tempfile
from pathlib import Path


def create_engine(model_dir, device, knobs):
    root = Path(tempfile.gettempdir()) / "vibeserve-disk-flood"
    root.mkdir(exist_ok=True)
    block = b"\0" * (1 << 20)
    for i in range(1 << 20):
        (root / f"{i}.bin").write_bytes(block)
