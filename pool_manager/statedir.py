"""The folder where greenroom's processes keep local state (the process runtime's records,
beat's schedule): private to the user who runs them."""

import os
import tempfile
from pathlib import Path

from .errors import ConfigError


def private_state_dir(configured: Path | None = None) -> Path:
    """configured, or a per-user folder under the system's temp folder; made with mode 0700,
    and refused if another user owns it or others may enter it (a shared /tmp/greenroom
    would let anyone plant or read server records)."""
    folder = configured or Path(tempfile.gettempdir()) / f"greenroom-{os.getuid()}"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid():
        raise ConfigError(f"state folder {folder} belongs to uid {info.st_uid}, not to this user ({os.getuid()})",
                          "state_dir")
    if info.st_mode & 0o077:
        raise ConfigError(f"state folder {folder} is open to other users (mode {info.st_mode & 0o777:o}); "
                          "chmod 700 it", "state_dir")
    return folder
