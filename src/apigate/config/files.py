"""Every file apigate reads at startup (the configuration, keys, certificates), read bounded.

`apigate check --config /dev/zero` read forever, and a key path pointing at /dev/urandom or
a FIFO hung `check` and `serve` alike. A file apigate reads must be a regular file no
larger than its limit; anything else is a one-line error naming the file.
"""

from __future__ import annotations

import os
import stat
from typing import Final

MAX_CONFIG_BYTES: Final = 4 * 1024 * 1024  # thousands of routes fit in far less
MAX_PEM_BYTES: Final = 1024 * 1024  # a key, a certificate chain or a CA bundle (Debian's: ~220 KiB)


class FileProblem(OSError):
    """A file that cannot be used; `str()` is the reason, without the file name."""


def read_bounded(name: str, max_bytes: int) -> bytes:
    """The bytes of the regular file `name`; FileProblem (an OSError) when it is not a
    regular file or larger than `max_bytes`. O_NONBLOCK: opening a FIFO never waits."""
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FileProblem("Is a directory")  # as open() + read() says it
        if not stat.S_ISREG(st.st_mode):
            raise FileProblem("not a regular file")
        if st.st_size > max_bytes:
            raise FileProblem(f"larger than {max_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, min(65536, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise FileProblem(f"larger than {max_bytes} bytes")  # it grew while read
        return b"".join(chunks)
    finally:
        os.close(fd)


def reason(e: OSError) -> str:
    """The one-line reason of a read_bounded failure."""
    if isinstance(e, FileProblem):
        return str(e)
    return e.strerror or str(e)
