"""GET /openapi.json: the API described, request schemas drawn from the same pydantic
models that validate the requests."""

from flask import Blueprint

from pool_manager.schemas import ChatJob

bp = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"
JSON = "application/json"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict, description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema}}}


ERROR = _body(_ref("Error"), "An error")
ERRORS = {str(code): ERROR for code in (400, 401, 404, 413, 415, 422)}
NUMBER_OR_NULL = {"type": ["number", "null"]}

SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"},
            "job_id": {"type": "string"}}}},
    },
    "Job": {
        "type": "object", "required": ["id", "status", "model", "session_id", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["queued", "waiting_for_container", "running", "succeeded", "failed", "cancelled"]},
            "model": {"type": "string"}, "session_id": {"type": "string"},
            "created_at": {"type": "number"}, "finished_at": {"type": "number"},
            "position": {"type": "integer", "description": "place in line while waiting_for_container"},
            "result": _ref("ChatCompletion"),
            "error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
        },
    },
    "ChatCompletion": {
        "type": "object", "required": ["object", "choices"],
        "description": "The model server's OpenAI chat.completion, plus greenroom's metadata.",
        "properties": {
            "object": {"type": "string"}, "choices": {"type": "array"}, "model": {"type": "string"},
            "greenroom": {"type": "object", "properties": {
                "job_id": {"type": "string"}, "session_id": {"type": "string"}, "container": {"type": "string"},
                "warm": {"type": "boolean"}, "new_session": {"type": "boolean"},
                "timings": {"type": "object", "properties": {
                    k: {"type": "number"} for k in ("queued_s", "waited_for_container_s", "in_container_s", "total_s")
                }},
            }},
        },
    },
    "OpenAIChatRequest": {
        "type": "object", "required": ["model", "messages"],
        "description": "An OpenAI chat-completion request; other fields pass to the model server.",
        "properties": {
            "model": {"type": "string"}, "messages": {"type": "array", "items": _ref("Message"), "minItems": 1},
            "session_id": {"type": "string"}, "stream": {"const": False},
        },
    },
    "Session": {
        "type": "object", "required": ["id", "state"],
        "properties": {"id": {"type": "string"}, "state": {"type": ["string", "null"]},
                       "model": {"type": ["string", "null"]}, "container": {"type": "string"},
                       "created_at": {"type": "number"}},
    },
    "Pool": {
        "type": "object",
        "required": ["name", "runtime", "target_idle", "max_total", "idle", "warming", "assigned", "failed",
                     "degraded"],
        "properties": {"name": {"type": "string"}, "runtime": {"type": "string"},
                       **{k: {"type": "integer"} for k in ("target_idle", "max_total", "idle", "warming",
                                                            "assigned", "failed", "booted")},
                       "degraded": {"type": "boolean",
                                    "description": "its last boots all failed (backing off), or its runtime fails"},
                       "runtime_error": {"type": ["string", "null"]}},
    },
    "PoolChange": {
        "type": "object", "minProperties": 1, "additionalProperties": False,
        "properties": {"target_idle": {"type": "integer", "minimum": 0},
                       "max_total": {"type": "integer", "minimum": 1}},
    },
}


def _schemas() -> dict:
    job_schema = ChatJob.model_json_schema(ref_template=REF)
    nested = job_schema.pop("$defs", {})
    return SCHEMAS | nested | {"ChatJob": job_schema}


ID = {"type": "string", "maxLength": 128}


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": ID}


def _paths() -> dict:
    job = _body(_ref("Job"), "The job")
    session = _body(_ref("Session"), "The session")
    pool = _body(_ref("Pool"), "The pool")
    return {
        "/v1/jobs": {"post": {
            "summary": "Submit a chat job", "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ChatJob")}}},
            "responses": {"202": job, "409": ERROR, "503": ERROR, **ERRORS}}},
        "/v1/jobs/{job_id}": {
            "parameters": [_path_param("job_id")],
            "get": {"summary": "A job's status and result; ?wait=N long-polls",
                    "parameters": [{"name": "wait", "in": "query", "schema": {"type": "number", "minimum": 0}}],
                    "responses": {"200": job, **ERRORS}},
            "delete": {"summary": "Cancel a queued job", "responses": {"200": job, "409": ERROR, **ERRORS}}},
        "/v1/chat/completions": {"post": {
            "summary": "OpenAI-compatible chat; 202 with a job to poll if the reply takes longer than chat_wait_s",
            "parameters": [{"name": "X-Greenroom-Session", "in": "header", "schema": ID}],
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("OpenAIChatRequest")}}},
            "responses": {"200": _body(_ref("ChatCompletion"), "The reply"), "202": job,
                          **{c: ERROR for c in ("409", "502", "503", "504")}, **ERRORS}}},
        "/v1/sessions/{session_id}": {
            "parameters": [_path_param("session_id")],
            "get": {"summary": "A session's state", "responses": {"200": session, **ERRORS}},
            "delete": {"summary": "Close a session; its container goes", "responses": {"200": session, "202": session,
                                                                                       **ERRORS}}},
        "/v1/pools": {"get": {"summary": "Every pool", "responses": {"200": _body(
            {"type": "object", "properties": {"pools": {"type": "array", "items": _ref("Pool")}}}, "Pools"),
            **ERRORS}}},
        "/v1/pools/{name}": {
            "parameters": [_path_param("name")],
            "get": {"summary": "One pool", "responses": {"200": pool, **ERRORS}},
            "patch": {"summary": "Scale a pool (admin)",
                      "requestBody": {"required": True, "content": {JSON: {"schema": _ref("PoolChange")}}},
                      "responses": {"200": pool, "403": ERROR, **ERRORS}}},
        "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "Redis and broker reachable", "security": [],
                            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [],
                                  "responses": {"200": {"description": "OpenAPI 3.1"}}}},
    }


@bp.get("/openapi.json")
def document():
    return {
        "openapi": "3.1.0",
        "info": {"title": "greenroom", "version": "0.1.0",
                 "description": "Chat jobs served by AI model servers that were booted before the job arrived."},
        "components": {"schemas": _schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": _paths(),
    }
