"""GET /openapi.json: the API described, request schemas drawn from the same pydantic
models that validate the requests. It is built per request from the settings, so the
limits it states (the longest ?wait=, the models there are) are this deployment's.
tests/test_fuzz.py fuzzes the API from it and fails where the API and it disagree."""

from flask import Blueprint
from pydantic import BaseModel

from pool_manager.schemas import ID_PATTERN, RESERVED_OPTIONS, Board, ChatJob, JobView, PoolChange, PoolStatus
from pool_manager.settings import NAME, Settings

from .services import services
from .ui_sessions import COOKIE

bp = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"
JSON = "application/json"
SESSION_STATES = ["starting", "active", "closing", "closed", "broken"]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict, description: str, **headers: dict) -> dict:
    response = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _header(description: str) -> dict:
    return {"description": description, "required": True, "schema": {"type": "string"}}


LOCATION = _header("where to poll the job: /v1/jobs/<id>")
SSE = "text/event-stream"
# A server-sent event: its type (message when absent), its data (JSON) and its id.
STREAMED = {"schema": {"type": "object", "required": ["data"], "properties": {
    "event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}}}}
SESSION = _header("the job's session id, to continue the conversation")

# Why each error status can happen; an operation lists only those it can answer.
ERROR_REASONS = {
    400: "The request could not be parsed, or its body is not valid JSON (or not UTF-8, or nested deeper "
         "than 32 levels)",
    401: "No valid bearer token",
    403: "The token's tenant is not an admin",
    404: "No such resource visible to this tenant (another tenant's reads as absent), or an unknown model",
    408: "The body stopped before its end: the client sent none of the rest for api_read_timeout_s (30 s)",
    409: "Conflict with the resource's state",
    413: "The body is larger than max_body_bytes",
    414: "The request line is longer than 4094 bytes",
    415: "The body is not application/json",
    422: "The request breaks the schema or a rule it cannot state; error.field names the culprit",
    429: "Over a limit: the tenant's (limit_exceeded; error.limit names it) or this server's open long polls "
         "(too_many_waits). Retry-After says when to try again",
    431: "The request headers are too many (over 100) or one is longer than 8190 bytes",
    502: "The model server failed or the container was lost",
    503: "No container became free in time, or the job queue or the job store is unreachable or full",
    504: "The model server did not reply in time",
}
# Any request can get these: the HTTP server refuses what it cannot parse.
ANY_ERRORS = (400, 414, 431)
BODY_ERRORS = (408, 413, 415, 422)


def _errors(*codes: int) -> dict:
    return {str(code): _body(_ref("Error"), ERROR_REASONS[code]) for code in sorted({*codes, *ANY_ERRORS})}


def _model_schemas(*models: type[BaseModel]) -> dict:
    """The schemas of pydantic models (the API's own shapes) and of the models they nest."""
    schemas = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF)
        schemas |= schema.pop("$defs", {})
        schemas[model.__name__] = schema
    return schemas


def _schemas(settings: Settings) -> dict:
    models = list(settings.pools)
    job = ChatJob.model_json_schema(ref_template=REF)
    nested = job.pop("$defs", {})
    # The models are this deployment's pools (fixed while it runs); any other is a 404.
    job["properties"]["model"] = {"type": "string", "enum": models, "description": "a pool; see GET /v1/pools"}
    # The options' reserved names, which ChatJob's validator refuses, stated as a schema.
    job["properties"]["options"]["propertyNames"] = {"not": {"enum": sorted(RESERVED_OPTIONS)}}
    job["properties"]["options"]["description"] = "passed to the model server (temperature, max_tokens, ...)"
    number = {"type": "number"}
    return nested | _model_schemas(JobView, PoolStatus, PoolChange, Board) | {
        "ChatJob": job,
        "OpenAIChatRequest": {
            "type": "object", "required": ["model", "messages"], "additionalProperties": True,
            "description": "An OpenAI chat-completion request; its other fields pass to the model server.",
            "properties": {
                "model": job["properties"]["model"],
                "messages": job["properties"]["messages"],
                "session_id": job["properties"]["session_id"],
                "stream": {"type": ["boolean", "null"],
                           "description": "true: the reply as server-sent events, as OpenAI streams it"},
                "stream_options": {"type": ["object", "null"],
                                   "description": "include_usage: a last chunk with the usage"},
            },
        },
        "Error": {
            "type": "object", "required": ["error"], "additionalProperties": False,
            "properties": {"error": {
                "type": "object", "required": ["code", "message"], "additionalProperties": False,
                "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                               "field": {"type": "string", "description": "the request field at fault"},
                               "job_id": {"type": "string", "description": "the failed job, if one was made"}}}},
        },
        "Session": {
            "type": "object", "required": ["id", "state"], "additionalProperties": False,
            "properties": {"id": {"type": "string"},
                           "state": {"enum": SESSION_STATES,
                                     "description": "starting: its first job has not claimed a container yet"},
                           "model": {"type": ["string", "null"], "description": "absent while closing"},
                           "container": {"type": "string", "description": "while active"},
                           "created_at": number},
        },
    }


def _path_param(name: str, pattern: str = ID_PATTERN, examples: list | None = None) -> dict:
    schema = {"type": "string", "pattern": pattern}
    if examples:
        schema["examples"] = examples
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _paths(settings: Settings) -> dict:
    job = _body(_ref("JobView"), "The job")
    session = _body(_ref("Session"), "The session")
    pool = _body(_ref("PoolStatus"), "The pool")
    json_body = {"content": {JSON: {"schema": {"type": "object"}}}}
    job_links = {
        "GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/id"}},
        "CancelJob": {"operationId": "cancelJob", "parameters": {"job_id": "$response.body#/id"}},
        "GetSession": {"operationId": "getSession", "parameters": {"session_id": "$response.body#/session_id"}},
        "CloseSession": {"operationId": "closeSession",
                         "parameters": {"session_id": "$response.body#/session_id"}},
    }
    submitted = _body(_ref("JobView"), "Queued; poll it at Location", Location=LOCATION) | {"links": job_links}
    links = ("openapi", "pool_page", "chat", "jobs", "health", "metrics")
    index = {"type": "object", "required": ["name", "about", "docs", *links], "additionalProperties": False,
             "properties": {name: {"type": "string"} for name in ("name", "about", "docs", *links)}}
    return {
        "/": {"get": {"operationId": "index", "summary": "Where the OpenAPI document, the pool page and the "
                                                         "endpoints are", "security": [],
                      "responses": {"200": _body(index, "Links"), **_errors()}}},
        "/v1/jobs": {"post": {
            "operationId": "submitJob", "summary": "Submit a chat job",
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ChatJob")}}},
            "responses": {"202": submitted, **_errors(401, 404, 409, 429, 503, *BODY_ERRORS)}}},
        "/v1/jobs/{job_id}": {
            "parameters": [_path_param("job_id")],
            "get": {"operationId": "getJob", "summary": "A job's status and result; ?wait=N long-polls",
                    "parameters": [{"name": "wait", "in": "query", "description": "seconds to hold the request "
                                    "until the job ends", "schema": {"type": "number", "minimum": 0,
                                                                     "maximum": settings.max_wait_s}}],
                    "responses": {"200": job, **_errors(401, 404, 422, 429)}},
            "delete": {"operationId": "cancelJob", "summary": "Cancel a queued or waiting job (idempotent)",
                       "responses": {"200": job, **_errors(401, 404, 409)}}},
        "/v1/jobs/{job_id}/events": {
            "parameters": [_path_param("job_id")],
            "get": {"operationId": "getJobEvents",
                    "summary": "The job's life as server-sent events (queued, waiting_for_container, running, chunk, "
                               "restart, then succeeded, failed or cancelled with the job)",
                    "parameters": [{"name": name, "in": where, "description": "resume after this event (empty: "
                                                                             "from the start)",
                                    "schema": {"type": "string", "pattern": r"^(\d{1,20}-\d{1,20})?$"}}
                                   for name, where in (("Last-Event-ID", "header"), ("after", "query"))],
                    "responses": {"200": {"description": "The events", "content": {SSE: STREAMED}},
                                  **_errors(401, 404, 422, 429)}}},
        "/v1/chat/completions": {"post": {
            "operationId": "chatCompletion",
            "summary": "OpenAI-compatible chat; 202 with a job to poll if the reply takes longer than chat_wait_s",
            "parameters": [{"name": "X-Greenroom-Session", "in": "header",
                            "description": "the session, if the body names none (the body's session_id wins)",
                            "schema": {"type": "string", "pattern": ID_PATTERN}}],
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("OpenAIChatRequest")}}},
            "responses": {"200": _body(_ref("ChatCompletion"), "The reply", **{"X-Greenroom-Session": SESSION})
                          | {"content": {JSON: {"schema": _ref("ChatCompletion")}, SSE: STREAMED}},
                          "202": _body(_ref("JobView"), "Still running; poll it at Location", Location=LOCATION,
                                       **{"X-Greenroom-Session": SESSION}) | {"links": job_links},
                          **_errors(401, 404, 409, 429, 502, 503, 504, *BODY_ERRORS)}}},
        "/v1/sessions/{session_id}": {
            "parameters": [_path_param("session_id")],
            "get": {"operationId": "getSession", "summary": "A session's state",
                    "responses": {"200": session, **_errors(401, 404)}},
            "delete": {"operationId": "closeSession", "summary": "Close a session; its container goes (idempotent)",
                       "responses": {"200": session, "202": _body(_ref("Session"), "Closing"),
                                     **_errors(401, 404)}}},
        "/v1/pools": {"get": {"operationId": "listPools", "summary": "Every pool", "responses": {
            "200": _body({"type": "object", "required": ["pools"], "additionalProperties": False,
                          "properties": {"pools": {"type": "array", "items": _ref("PoolStatus")}}}, "Pools"),
            **_errors(401)}}},
        "/v1/pools/{name}": {
            "parameters": [_path_param("name", NAME, list(settings.pools))],
            "get": {"operationId": "getPool", "summary": "One pool", "responses": {"200": pool, **_errors(401, 404)}},
            "patch": {"operationId": "scalePool",
                      "summary": "Scale a pool (admin); target_idle a number or auto; null drops a run-time setting",
                      "requestBody": {"required": True, "content": {JSON: {"schema": _ref("PoolChange")}}},
                      "responses": {"200": pool, **_errors(401, 403, 404, *BODY_ERRORS)}}},
        "/v1/pools/{name}/rollout": {
            "parameters": [_path_param("name", NAME, list(settings.pools))],
            "post": {"operationId": "rolloutPool",
                     "summary": "Replace the pool's containers with new ones, as a spec change would (admin)",
                     "responses": {"202": _body(_ref("PoolStatus"), "Rollout asked for; the pool as it stands"),
                                   **_errors(401, 403, 404)}}},
        "/healthz": {"get": {"operationId": "healthz", "summary": "Liveness", "security": [], "responses": {
            "200": _body({"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
                         "Alive"), **_errors()}}},
        "/readyz": {"get": {"operationId": "readyz", "summary": "Redis and broker reachable", "security": [],
                            "responses": {"200": _body(_ref("Readiness"), "Ready"),
                                          "503": _body(_ref("Readiness"), "Not ready"), **_errors()}}},
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics", "security": [],
                             "responses": {"200": {"description": "Prometheus text exposition",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}},
                                           **_errors()}}},
        **_ui_paths(),
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document", "security": [],
                                  "responses": {"200": json_body | {"description": "OpenAPI 3.1"}, **_errors()}}},
    }


HTML = "text/html"
UI_SECURITY = [{"bearer": []}, {"uiSession": []}]


def _html(description: str) -> dict:
    return {"description": description, "content": {HTML: {"schema": {"type": "string"}}}}


def _see_other(description: str) -> dict:
    return {"description": description, "headers": {
        "Location": _header("/ui"),
        "Set-Cookie": _header(f"{COOKIE}: Secure, HttpOnly, SameSite=Strict, Path=/ui")}}


def _ui_paths() -> dict:
    """The pool page: HTML for browsers, its figures as JSON; an admin's, by bearer token or
    the login form's session cookie."""
    form = {"type": "object", "required": ["token"],
            "properties": {"token": {"type": "string", "minLength": 1, "maxLength": 4096,
                                     "description": "an admin's API token"}}}
    signin = "The sign-in form: no valid token or session"
    return {
        "/ui": {"get": {
            "operationId": "poolPage", "summary": "The live pool page (admin)", "security": UI_SECURITY,
            "responses": {"200": _html("The page; it polls /ui/state"), "401": _html(signin),
                          "403": _html("The sign-in form: the token's tenant is not an admin"), **_errors()}}},
        "/ui/state": {"get": {
            "operationId": "poolPageState", "summary": "What the pool page shows, as JSON (admin)",
            "security": UI_SECURITY,
            "responses": {"200": _body(_ref("Board"), "Every pool: containers, line, target, recent claims"),
                          **_errors(401, 403)}}},
        "/ui/login": {"post": {
            "operationId": "poolPageLogin", "summary": "Sign in to the pool page with an admin token", "security": [],
            "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": form}}},
            "responses": {"303": _see_other("Signed in: a session cookie, and on to the page"),
                          "200": _html("The form again: the token is not valid, or not an admin's"),
                          "422": _html("The form again: no token given"), **_errors(413)}}},
        "/ui/logout": {"post": {
            "operationId": "poolPageLogout", "summary": "Sign out of the pool page", "security": [],
            "responses": {"303": _see_other("Signed out: the cookie cleared, and back to the sign-in form"),
                          **_errors()}}},
    }


READINESS = {
    "type": "object", "required": ["status", "checks"],
    "properties": {"status": {"enum": ["ready", "not_ready"]},
                   "checks": {"type": "object", "required": ["redis", "broker"],
                              "properties": {"redis": {"type": "boolean"}, "broker": {"type": "boolean"}}}},
}


@bp.get("/openapi.json")
def document():
    settings = services().settings
    return {
        "openapi": "3.1.0",
        "info": {"title": "greenroom", "version": "0.1.0",
                 "description": "Chat jobs served by AI model servers that were booted before the job arrived. "
                                "Every error is JSON: {\"error\": {\"code\", \"message\"}}."},
        "components": {"schemas": _schemas(settings) | {"Readiness": READINESS},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                           "uiSession": {"type": "apiKey", "in": "cookie", "name": COOKIE,
                                                         "description": "the pool page's login (/ui only)"}}},
        "security": [{"bearer": []}],
        "paths": _paths(settings),
    }
