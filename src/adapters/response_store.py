"""The Responses API's store: responses kept in this process's memory, bounded in count and bytes.

Records are immutable bytes (the response and its conversation as JSON), so what is counted is
exactly what is held, and a reader can never see a record change under it. The oldest records
go first when either bound is passed. Nothing survives a restart, and workers of a multi-process
server (gunicorn) do not share it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict


class MemoryResponseStore:
    """Implements the ResponseStore port. A lock guards every call: decoders in worker threads
    read it (`previous_response_id`) while the event loop writes it."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self._max_count, self._max_bytes = max_count, max_bytes
        self._records: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, key: str, record: bytes) -> bool:
        size = _size(key, record)
        if self._max_count < 1 or size > self._max_bytes:
            return False
        with self._lock:
            old = self._records.pop(key, None)
            if old is not None:
                self._bytes -= _size(key, old)
            self._records[key] = record
            self._bytes += size
            while len(self._records) > self._max_count or self._bytes > self._max_bytes:
                oldest, dropped = self._records.popitem(last=False)
                self._bytes -= _size(oldest, dropped)
        return True

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._records.get(key)

    def delete(self, key: str) -> bool:
        with self._lock:
            record = self._records.pop(key, None)
            if record is not None:
                self._bytes -= _size(key, record)
            return record is not None

    @property
    def count(self) -> int:
        return len(self._records)

    @property
    def size(self) -> int:
        """Bytes held: records and their keys."""
        return self._bytes


def _size(key: str, record: bytes) -> int:
    return len(key.encode()) + len(record)
