"""Domain errors. Each carries the OpenAI error `code` and, where one field is to blame, its `param`."""

from __future__ import annotations

RETRY_AFTER = 5  # seconds a client is asked to wait: a busy queue drains, a restart is back


class DomainError(Exception):
    code = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(DomainError):
    code = "invalid_value"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class ContextTooLong(InvalidRequest):
    code = "context_length_exceeded"


class InvalidImage(InvalidRequest):
    """The bytes are not a usable image: bad base64, not an image, truncated, empty, too many
    pixels."""

    code = "invalid_image"


class InvalidImageUrl(InvalidRequest):
    """The image URL cannot be fetched: refused scheme or address, unreachable, non-2xx, too
    large, timed out."""

    code = "invalid_image_url"


class ModelNotFound(DomainError):
    code = "model_not_found"


class ResponseNotFound(DomainError):
    """A stored response that is not (or no longer) kept: never stored, deleted or evicted."""

    code = "response_not_found"


class ModelUnavailable(DomainError):
    """The model exists but cannot be served now (not downloaded and offline, failed to load)."""

    code = "model_unavailable"


class ServerBusy(DomainError):
    """The queue is full, or a request waited longer than the server allows: try again later."""

    code = "server_busy"
    retry_after = RETRY_AFTER  # sent as Retry-After


class EngineFailure(DomainError):
    """Inference broke while generating: a server fault, never the client's."""

    code = "engine_failure"


class EngineUnavailable(DomainError):
    """The engine failed as a whole (a batched step raised: out of memory, a backend error):
    every request in flight is answered 503; the server goes on serving the next ones."""

    code = "engine_unavailable"
    retry_after = RETRY_AFTER  # sent as Retry-After
