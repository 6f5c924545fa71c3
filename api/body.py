"""Reading a JSON request body strictly: the right content type, valid UTF-8, valid JSON
(not NaN or Infinity, which Python would take), an object, within the size limit (Flask's
MAX_CONTENT_LENGTH answers 413, for a chunked body too)."""

import json
import math

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from .errors import ApiError

MAX_DEPTH = 32


def json_object() -> dict:
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    raw = request.get_data(cache=True)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and limit is not None and len(raw) >= limit \
            and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()  # chunked: werkzeug stops reading at the limit, silently
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_not_json, parse_float=_finite)
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "the body is not valid UTF-8") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "body: the body must be a JSON object", field="body")
    if _depth(body) > MAX_DEPTH:
        raise ApiError(400, "invalid_json", f"the body is nested deeper than {MAX_DEPTH} levels")
    return body


def _not_json(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _depth(value, level: int = 1) -> int:
    if level > MAX_DEPTH:
        return level
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return max((_depth(child, level + 1) for child in children), default=level)
