"""Task ids: random UUID4 strings, made from a buffered ``os.urandom`` read.

``uuid.uuid4()`` asks the kernel for 16 bytes each time, which on some VMs costs ~10 us, the
largest single cost of an enqueue. Reading 8 KiB at once keeps the same randomness source.
"""

from __future__ import annotations

import os
import threading

_CHUNK = 16 * 512
_lock = threading.Lock()
_buffer = b""
_offset = _CHUNK


def new_task_id() -> str:
    """A fresh UUID4 in its canonical 36-character form."""
    global _buffer, _offset
    with _lock:
        if _offset >= _CHUNK:
            _buffer, _offset = os.urandom(_CHUNK), 0
        raw = _buffer[_offset : _offset + 16]
        _offset += 16
    h = raw.hex()
    # Version nibble 4 and variant bits 10xx, as RFC 4122 requires.
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"
