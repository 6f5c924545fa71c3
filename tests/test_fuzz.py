"""Fuzz the real API over HTTP from its own OpenAPI document (schemathesis): no 5xx, and
every response matches the document (status, content type, headers, body schema).

The document is built in-process at collection, from the app the API runs with the same
settings (schemathesis parametrizes at collection; its fixture-based loader does not work
with pytest >= 9.2), and `test_the_served_document_is_the_one_fuzzed` checks that the API
serves exactly that document. The API is the real gunicorn process of an API-only stack:
no workers, so submitted jobs stay queued.

Every operation is fuzzed and every schemathesis check runs (not_a_server_error,
status_code/content_type/response_headers/response_schema conformance, positive and
negative data, ignored_auth, unsupported_method, use_after_free, ...), in the examples,
coverage and fuzzing phases and, following the document's links, statefully. None is
excluded or turned off; CONFIG widens what two checks expect, each for a stated reason
(and narrows both: no 5xx, ever).
"""

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api import create_app
from pool_manager.settings import reference_pool
from stack import TOKENS, Stack

POOL = {"command": ["python3", "images/chatbot/server.py"], "runtime": "process", "target_idle": 0}
# chat_wait_s, max_wait_s and max_stream_s short: with no workers, every chat answers 202
# and every long poll and stream runs to its end; a 64 KiB body limit makes the 413 path reachable by the fuzzer.
SETTINGS = {"max_body_bytes": 65536, "chat_wait_s": 0.2, "max_wait_s": 1, "max_stream_s": 1}
# Fixed, so CI runs the same requests each time; set them to explore further locally.
SEED = int(os.environ.get("GREENROOM_FUZZ_SEED", "5"))
MAX_EXAMPLES = int(os.environ.get("GREENROOM_FUZZ_EXAMPLES", "50"))

pytestmark = pytest.mark.timeout(max(120, 3 * MAX_EXAMPLES))


def _document() -> dict:
    app = create_app({"pools": {"chatbot": reference_pool(**POOL)}, **SETTINGS})
    return app.test_client().get("/openapi.json").json


# What a schema-valid request may get besides 2xx: 404 (no such job, session or pool),
# 409 (a closed session), and 413: the whole body past max_body_bytes, a limit JSON
# Schema cannot state. A schema-violating request is refused with a 4xx: 413 or, from the
# HTTP server, 414 and 431 included (a request line or headers too large to parse).
ACCEPTED = ["2xx", "404", "409", "413"]
REJECTED = ["400", "401", "403", "404", "409", "413", "414", "415", "422", "431"]
CONFIG = schemathesis.Config.from_dict({
    "seed": SEED,
    # How fast inputs are generated depends on the machine, not on the API.
    "suppress-health-check": ["too_slow"],
    # No example database: a failure found once is not replayed from .hypothesis/ later.
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none",
                   # The token is ours (see `authorization`), not generated; the
                   # ignored_auth check still sends each operation without it and with a
                   # wrong one, and expects 401.
                   "with-security-parameters": False},
    "checks": {
        "positive_data_acceptance": {"expected-statuses": ACCEPTED},
        "negative_data_rejection": {"expected-statuses": REJECTED},
    },
    "operations": [
        {"include-operation-id": "scalePool",
         # target_idle may not exceed max_total, the given or the current one: a rule
         # between two values, one of them server state, that JSON Schema cannot state.
         "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]}}},
        # The pool page's forms answer 303 See Other on success (post/redirect/get).
        *({"include-operation-id": operation,
           "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "303"]}}}
          for operation in ("poolPageLogin", "poolPageLogout")),
    ],
})

DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


@pytest.fixture(scope="module")
def stack(redis_url, tmp_path_factory):
    running = Stack(redis_url, "fuzz", tmp_path_factory.mktemp("fuzz"), POOL, **SETTINGS)
    running.start("api")
    yield running
    running.stop()


def test_the_served_document_is_the_one_fuzzed(stack):
    with stack.client() as client:
        assert client.get("/openapi.json").json() == DOCUMENT


def test_the_document_is_valid_openapi_3_1():
    schema.validate()  # against the OpenAPI 3.1 meta-schema; raises if not


ADMIN_OPERATIONS = {"scalePool", "rolloutPool", "poolPage", "poolPageState"}


def authorization(case) -> dict:
    """The token goes with each call (schemathesis 4.32 drops per-operation config headers
    in its fuzzing phase): pool changes and the pool page need an admin; everything else is
    tenant acme's."""
    tenant = "admin" if case.operation.definition.raw.get("operationId") in ADMIN_OPERATIONS else "acme"
    return {"Authorization": f"Bearer {TOKENS[tenant]}"}


@schema.parametrize()
@settings(deadline=None)
def test_api(case, stack):
    case.call_and_validate(base_url=stack.api_url, headers=authorization(case))


def test_stateful(stack):
    """Sequences that follow the document's links: submit a job, then read, cancel or poll
    it and its session, so the fuzzer reaches real jobs, not only unknown ids."""

    class Machine(schema.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"base_url": stack.api_url, "headers": authorization(case)}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, additional_checks=additional_checks, headers=kwargs["headers"],
                                   transport_kwargs=kwargs)

    Machine.run(settings=settings(max_examples=MAX_EXAMPLES, stateful_step_count=6, deadline=None,
                                  derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]))


# What the fuzzer (and probing around what it found) turned up, pinned down: each of these
# was a 2xx, gunicorn's HTML page, or a body silently cut short.
MESSAGES = [{"role": "user", "content": "hi"}]


def error(response) -> tuple[int, str]:
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    return response.status_code, response.json()["error"]["code"]


def test_errors_the_http_server_answers_are_json(stack):
    with stack.client() as client:
        assert error(client.get("/v1/jobs/x", params={"wait": "1" * 5000})) == (414, "uri_too_long")
        assert error(client.get("/v1/pools", headers={"X-Big": "x" * 9000})) == (
            431, "request_header_fields_too_large")


def test_a_chunked_body_past_the_limit_is_413(stack):
    with stack.client() as client:
        def post(size: int):
            body = b'{"model": "chatbot", "messages": [{"role": "user", "content": "'
            body += b"x" * (size - len(body) - 4) + b'"}]}'
            assert len(body) == size
            return client.post("/v1/jobs", content=iter([body]), headers={"Content-Type": "application/json"})

        assert post(SETTINGS["max_body_bytes"]).status_code == 202
        assert error(post(SETTINGS["max_body_bytes"] + 1)) == (413, "request_entity_too_large")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_nan_and_infinity_are_not_json(stack, literal):
    body = b'{"model": "chatbot", "messages": [{"role": "user", "content": "x"}], "options": {"t": %s}}' % literal
    with stack.client() as client:
        for path in ("/v1/jobs", "/v1/chat/completions"):
            response = client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert error(response) == (400, "invalid_json")


@pytest.mark.parametrize("stream", [0, "", {}, [], "false"])
def test_stream_must_be_false_not_falsy(stack, stream):
    with stack.client() as client:
        response = client.post("/v1/chat/completions", json={"model": "chatbot", "messages": MESSAGES,
                                                             "stream": stream})
        assert error(response) == (422, "invalid_request") and response.json()["error"]["field"] == "stream"


def test_the_session_header_is_checked_even_when_the_body_names_the_session(stack):
    with stack.client() as client:
        body = {"model": "chatbot", "messages": MESSAGES, "session_id": "fuzz-body-session"}
        response = client.post("/v1/chat/completions", json=body, headers={"X-Greenroom-Session": "../x"})
        assert error(response) == (422, "invalid_request")
        assert response.json()["error"]["field"] == "X-Greenroom-Session"
        response = client.post("/v1/chat/completions", json=body | {"session_id": ""},
                               headers={"X-Greenroom-Session": "fuzz-header-session"})
        assert error(response) == (422, "invalid_request")  # an empty session_id is not "none"
        assert response.json()["error"]["field"] == "session_id"
