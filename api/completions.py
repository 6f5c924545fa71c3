"""POST /v1/chat/completions: OpenAI-compatible. Waits for the reply up to chat_wait_s,
then answers 202 with the job id to poll. The session travels as `session_id` in the
body (the OpenAI client's extra_body) or the X-Greenroom-Session header."""

import re

from flask import Blueprint, request, url_for

from pool_manager.schemas import ID_PATTERN, ChatJob, JobView

from .body import json_object
from .auth import tenant
from .errors import ApiError
from .gunicorn_conf import stopping
from .services import services
from .submit import submit

bp = Blueprint("completions", __name__, url_prefix="/v1/chat")
SESSION_HEADER = "X-Greenroom-Session"

# A failed job's code -> the status a chat client gets.
FAILURE_STATUS = {"no_container_available": 503, "container_lost": 502, "container_timeout": 504,
                  "model_error": 502, "session_closed": 409, "session_model_mismatch": 409,
                  "invalid_request": 422, "unknown_model": 404, "limit_exceeded": 429}


@bp.post("/completions")
def completions():
    body = json_object()
    stream = body.pop("stream", None)
    if stream is True:
        raise ApiError(422, "invalid_request", "stream: streaming is not supported", field="stream")
    if stream is not None and stream is not False:  # 0, "" or {} are not false
        raise ApiError(422, "invalid_request", "stream: must be false", field="stream")
    session_id = body.pop("session_id", None)  # an empty one is invalid, not absent
    header = request.headers.get(SESSION_HEADER)
    if header is not None and not re.fullmatch(ID_PATTERN, header):  # checked even when the body wins
        raise ApiError(422, "invalid_request", f"{SESSION_HEADER}: must match {ID_PATTERN}", field=SESSION_HEADER)
    if session_id is None:
        session_id = header
    fields = {"model": body.pop("model", None), "messages": body.pop("messages", None),
              "session_id": session_id, "options": body}
    job = submit(ChatJob.model_validate(fields))
    with services().waits.hold(tenant()) as admitted:  # past the caps: a 202 at once, to poll
        job = services().jobs.wait(job["id"], services().settings.chat_wait_s if admitted else 0, stopping)
    headers = {SESSION_HEADER: job["session_id"]}
    if job["status"] == "succeeded":
        return job["result"], 200, headers
    if job["status"] == "failed":
        error = job["error"]
        raise ApiError(FAILURE_STATUS.get(error["code"], 500), error["code"], error["message"], job_id=job["id"])
    headers["Location"] = url_for("jobs.read", job_id=job["id"])
    return JobView.of(job).public(), 202, headers
