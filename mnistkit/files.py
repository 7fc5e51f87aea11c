"""Writing files so that a reader sees the old version or the new one, never half of one."""

import os
import tempfile


def atomic_write_text(path: str, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, then renames it over `path`."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
