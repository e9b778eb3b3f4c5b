"""Keep a server process's memory flat under parallel transfers.

glibc gives each thread that allocates its own malloc arena (up to 8 per core) and keeps
freed memory in them; the web server hashes and writes chunks in a thread pool, so 4 MiB
buffers freed in one arena are not reused by the next request in another, and resident
memory climbs with the number of threads that ever touched a chunk (measured: the web
server's peak while a 1 GiB file was downloaded after its upload was 142 MB; with two
arenas 129 MB). Two arenas keep that bounded while threads still rarely contend for one.
Elsewhere (musl, macOS) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_ARENA_MAX = -8  # from glibc's malloc.h


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process; True if it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False
