"""The real clock and id source."""

from __future__ import annotations

import secrets
import time


class SystemClock:
    def now(self) -> float:
        return time.time()


class RandomIds:
    def completion_id(self) -> str:
        return f"chatcmpl-{secrets.token_hex(12)}"

    def tool_call_id(self) -> str:
        return f"call_{secrets.token_hex(12)}"
