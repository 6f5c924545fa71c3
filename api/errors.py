"""Every error is JSON, {"error": {"code", "message"}}, with the right status; never a
stack trace, and never a 500 for a client's mistake."""

import logging

from flask import Flask, jsonify, request
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, **extra):
    response = jsonify({"error": {"code": code, "message": message, **extra}})
    response.status_code = status
    return response


def _http_code(exc: HTTPException) -> str:
    return (exc.name or "error").lower().replace(" ", "_")


def validation_error(exc: ValidationError) -> ApiError:
    """422 naming the first field at fault."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    message = "missing; this field is required" if first["type"] == "missing" else first["msg"]
    return ApiError(422, "invalid_request", f"{field}: {message}", field=field)


DRAIN_LIMIT_BYTES = 16 * 1024 * 1024


def _drain_body() -> None:
    """Read and drop an oversized body (up to a cap) before answering 413: closing with
    unread bytes makes the kernel reset the connection, and the client may lose the 413."""
    if (request.content_length or 0) > DRAIN_LIMIT_BYTES:
        return
    stream, drained = request.environ["wsgi.input"], 0
    while drained < DRAIN_LIMIT_BYTES and (chunk := stream.read(65536)):  # the cap for a chunked body
        drained += len(chunk)


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        response = error_response(exc.status, exc.code, exc.message, **exc.extra)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError):
        return _api_error(validation_error(exc))

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge):
        _drain_body()
        return _http(exc)

    @app.errorhandler(ClientDisconnected)
    def _body_stopped(exc: ClientDisconnected):
        """The body stopped short: the client left, or sent nothing for api_read_timeout_s."""
        return error_response(408, "request_timeout", "the request body stopped before its end")

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        response = error_response(exc.code or 500, _http_code(exc), exc.description or exc.name)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(RedisError)
    def _store(exc: RedisError):
        """Redis unreachable (after the client's retries), or full: it refuses writes
        (noeviction) rather than drop queued jobs. Either way, retry later; not a 500."""
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
            return error_response(503, "store_unavailable", "the job store is unreachable; retry later")
        if isinstance(exc, OutOfMemoryError):
            return error_response(503, "store_full", "the job store is full; retry later")
        return _unexpected(exc)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; the server log has details")
