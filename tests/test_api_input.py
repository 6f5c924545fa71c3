"""Auth, tenant isolation and bad input, against the real API over HTTP (no workers:
submitted jobs stay queued, which is what cancelling needs)."""

import hashlib
import uuid

import httpx
import pytest
import redis

from api import create_app
from bench import stack as bench_stack
from stack import TOKENS, Stack

pytestmark = pytest.mark.timeout(60)
MESSAGE = [{"role": "user", "content": "hi"}]
TIGHT = {"sessions": 2, "jobs_in_flight": 3, "submissions_per_second": 50}  # initech's limits


@pytest.fixture(scope="module")
def stack(redis_url, tmp_path_factory):
    pool = {"command": ["python3", "images/chatbot/server.py"], "runtime": "process", "target_idle": 0}
    running = Stack(redis_url, "input", tmp_path_factory.mktemp("api"), pool, max_body_bytes=65536,
                    tenant_overrides={"initech": TIGHT})
    running.start("api")
    yield running
    running.stop()


@pytest.fixture
def acme(stack):
    with stack.client("acme") as client:
        yield client


@pytest.fixture
def globex(stack):
    with stack.client("globex") as client:
        yield client


def submit(client, **body):
    return client.post("/v1/jobs", json={"model": "chatbot", "messages": MESSAGE} | body)


def error(response) -> tuple[int, str]:
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    return response.status_code, response.json()["error"]["code"]


@pytest.mark.parametrize("method, path", [
    ("POST", "/v1/jobs"), ("GET", "/v1/jobs/x"), ("DELETE", "/v1/jobs/x"), ("POST", "/v1/chat/completions"),
    ("GET", "/v1/sessions/x"), ("DELETE", "/v1/sessions/x"), ("GET", "/v1/pools"), ("GET", "/v1/pools/chatbot"),
    ("PATCH", "/v1/pools/chatbot"),
])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic YWNtZTphY21lLXRva2Vu", "Bearer"])
def test_every_resource_needs_a_valid_token(stack, method, path, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.request(method, stack.api_url + path, headers=headers, json={})
    assert error(response) == (401, "unauthorized")


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json"])
def test_health_readiness_and_the_document_are_public(stack, path):
    assert httpx.get(stack.api_url + path).status_code == 200


def test_a_tenant_sees_only_its_own_jobs_and_sessions(acme, globex):
    job = submit(acme).json()
    assert acme.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    assert error(globex.get(f"/v1/jobs/{job['id']}")) == (404, "job_not_found")
    assert error(globex.delete(f"/v1/jobs/{job['id']}")) == (404, "job_not_found")
    assert error(globex.get(f"/v1/sessions/{job['session_id']}")) == (404, "session_not_found")
    assert error(globex.delete(f"/v1/sessions/{job['session_id']}")) == (404, "session_not_found")
    assert acme.get(f"/v1/sessions/{job['session_id']}").status_code == 200


def test_session_ids_are_per_tenant_so_naming_another_tenants_tells_nothing(acme, globex):
    """globex naming acme's session starts a session of globex's own under that name: a
    202 as for any name, never a 404 that would tell the name is taken."""
    name = f"support-{uuid.uuid4().hex[:8]}"
    assert submit(acme, session_id=name).json()["session_id"] == name
    theirs = submit(globex, session_id=name)
    assert theirs.status_code == 202 and theirs.json()["session_id"] == name
    unused = submit(globex, session_id=f"never-used-{uuid.uuid4().hex[:8]}")
    assert unused.status_code == 202  # the same answer for a name nobody has


def test_a_tenant_over_its_limits_gets_429_naming_the_limit_and_others_do_not(stack, acme):
    with stack.client("initech") as initech:
        first, second = submit(initech).json(), submit(initech).json()  # two sessions: the limit
        refused = submit(initech)
        assert error(refused) == (429, "limit_exceeded")
        assert refused.json()["error"]["limit"] == "sessions" and refused.headers["Retry-After"] == "5"
        chat = initech.post("/v1/chat/completions", json={"model": "chatbot", "messages": MESSAGE})
        assert error(chat) == (429, "limit_exceeded")
        assert submit(initech, session_id=first["session_id"]).status_code == 202  # a follow-up: 3 in flight
        over = submit(initech, session_id=second["session_id"])
        assert error(over) == (429, "limit_exceeded") and over.json()["error"]["limit"] == "jobs_in_flight"
        assert submit(acme).status_code == 202  # another tenant is not held back
        assert initech.delete(f"/v1/jobs/{first['id']}").json()["status"] == "cancelled"  # one ends ...
        assert submit(initech, session_id=second["session_id"]).status_code == 202  # ... and room is made


def test_cancel_a_queued_job(acme):
    job = submit(acme).json()
    cancelled = acme.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert acme.delete(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"  # idempotent


def test_pool_changes_need_an_admin(stack, acme):
    assert error(acme.patch("/v1/pools/chatbot", json={"target_idle": 1})) == (403, "forbidden")
    with stack.client("admin") as admin:
        assert error(admin.patch("/v1/pools/chatbot", json={"target_idle": -1})) == (422, "invalid_request")
        assert error(admin.patch("/v1/pools/chatbot", json={"image": "evil"})) == (422, "invalid_request")
        assert error(admin.patch("/v1/pools/chatbot", json={"target_idle": "2"})) == (422, "invalid_request")
        assert error(admin.patch("/v1/pools/nope", json={"target_idle": 1})) == (404, "unknown_model")
        changed = admin.patch("/v1/pools/chatbot", json={"max_total": 7})
        assert changed.status_code == 200 and changed.json()["max_total"] == 7


@pytest.mark.parametrize("content, content_type, expected", [
    (b"{not json", "application/json", (400, "invalid_json")),
    (b'{"model": "chatbot", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "application/json",
     (400, "invalid_json")),
    (b"[" * 5000 + b"]" * 5000, "application/json", (400, "invalid_json")),
    (b'{"model": "chatbot", "messages": ' + b"[" * 100 + b"]" * 100 + b"}", "application/json",
     (400, "invalid_json")),
    (b'{"model": "chatbot"}', "text/plain", (415, "unsupported_media_type")),
    (b"model=chatbot", "application/x-www-form-urlencoded", (415, "unsupported_media_type")),
    (b'"just a string"', "application/json", (422, "invalid_request")),
    (b'{"model": "chatbot", "messages": [{"role": "user", "content": "' + b"x" * 70000 + b'"}]}',
     "application/json", (413, "request_entity_too_large")),
])
def test_malformed_bodies(acme, content, content_type, expected):
    for path in ("/v1/jobs", "/v1/chat/completions"):
        assert error(acme.post(path, content=content, headers={"Content-Type": content_type})) == expected


@pytest.mark.parametrize("body, field", [
    ({"model": "chatbot"}, "messages"),
    ({"model": "chatbot", "messages": []}, "messages"),
    ({"model": "chatbot", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"model": "chatbot", "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"model": "chatbot", "messages": "hello"}, "messages"),
    ({"messages": MESSAGE}, "model"),
    ({"model": "chatbot", "messages": MESSAGE, "session_id": "../../etc"}, "session_id"),
    ({"model": "chatbot", "messages": MESSAGE, "surprise": 1}, "surprise"),
    ({"model": "chatbot", "messages": MESSAGE, "options": {"model": "x"}}, "options"),
    ({"model": "chatbot", "messages": [{"role": "user", "content": "x"}] * 1001}, "messages"),
])
def test_schema_violations_are_422_naming_the_field(acme, body, field):
    response = acme.post("/v1/jobs", json=body)
    assert error(response) == (422, "invalid_request")
    assert response.json()["error"]["field"] == field


def test_openai_endpoint_validation(acme):
    for bad in ({"stream": "yes"}, {"stream": 1}, {"stream": True, "stream_options": ["include_usage"]}):
        response = acme.post("/v1/chat/completions", json={"model": "chatbot", "messages": MESSAGE} | bad)
        assert error(response) == (422, "invalid_request")
        assert response.json()["error"]["field"] in ("stream", "stream_options")
    assert error(acme.post("/v1/chat/completions", json={"model": "gpt-9", "messages": MESSAGE})
                 ) == (404, "unknown_model")


def test_unknown_model_is_404(acme):
    assert error(submit(acme, model="gpt-9")) == (404, "unknown_model")


@pytest.mark.parametrize("path", ["/v1/jobs/..%2F..%2Fetc%2Fpasswd", "/v1/jobs/" + "a" * 300,
                                  "/v1/sessions/%00", "/v1/jobs/%2e%2e", "/v1/nothing"])
def test_path_tricks_are_404(acme, path):
    assert error(acme.get(path))[0] == 404


@pytest.mark.parametrize("method, path", [("PUT", "/v1/jobs"), ("GET", "/v1/chat/completions"),
                                          ("POST", "/v1/pools"), ("PATCH", "/v1/jobs/x")])
def test_wrong_methods_are_405(acme, method, path):
    response = acme.request(method, path)
    assert error(response) == (405, "method_not_allowed")
    assert response.headers["Allow"]


@pytest.mark.parametrize("wait", ["abc", "-1", "nan", "inf", "1e9"])
def test_bad_wait_is_422(acme, wait):
    job = submit(acme).json()
    assert error(acme.get(f"/v1/jobs/{job['id']}", params={"wait": wait})) == (422, "invalid_request")


def test_readyz_reports_redis_and_broker(stack):
    assert httpx.get(stack.api_url + "/readyz").json() == {"status": "ready",
                                                           "checks": {"redis": True, "broker": True}}


def test_a_full_redis_gets_503_not_500_and_health_still_answers(tmp_path):
    """Redis at its maxmemory refuses writes (noeviction): a submission is told to retry."""
    pool = {"command": ["python3", "images/chatbot/server.py"], "runtime": "process", "target_idle": 0}
    with bench_stack.Stack(tmp_path, pool, tokens=TOKENS, tenant_limits=bench_stack.UNLIMITED) as own:
        own.kill("chat")
        own.kill("pool")
        own.kill("beat")
        store = redis.Redis.from_url(own.redis_url)
        with own.client("acme") as acme:
            assert submit(acme).status_code == 202
            store.config_set("maxmemory", 1)  # full now
            try:
                assert error(submit(acme)) == (503, "store_full")
                assert httpx.get(f"{own.api_url}/healthz").status_code == 200
            finally:
                store.config_set("maxmemory", "512mb")
            assert submit(acme).status_code == 202
        store.close()


def test_a_sha256_key_lets_its_token_in_and_not_itself(redis_url, deployment):
    """api_keys may hold "sha256:<hex>" in place of a token (`greenroom up` hands the API
    only digests): the token authenticates; the digest, sent as a token, does not."""
    token, plain = "hashed-token-0123456789", "plain-token-0123456789"
    digest = hashlib.sha256(token.encode()).hexdigest()
    app = create_app({"redis_url": redis_url, "deployment": deployment,
                      "api_keys": {"hashed": f"sha256:{digest}", "plain": plain}})
    client = app.test_client()

    def status(bearer: str) -> int:
        return client.get("/v1/pools", headers={"Authorization": f"Bearer {bearer}"}).status_code

    assert (status(token), status(plain)) == (200, 200)
    assert (status(digest), status(f"sha256:{digest}")) == (401, 401)


# ---------------------------------------------------------------- the first hour (issue 17)

def test_the_index_says_where_things_are(stack):
    """GET / (public) names the OpenAPI document, the pool page and the endpoints, as URLs
    that answer."""
    response = httpx.get(stack.api_url + "/")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["openapi"], body["pool_page"]) == (f"{stack.api_url}/openapi.json", f"{stack.api_url}/ui")
    assert "README.md" in body["docs"]
    assert httpx.get(body["openapi"]).status_code == httpx.get(body["health"]).status_code == 200


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/chat/completions"])
@pytest.mark.parametrize("missing", ["model", "messages"])
def test_a_missing_field_is_called_missing_on_both_endpoints(acme, path, missing):
    body = {"model": "chatbot", "messages": MESSAGE}
    del body[missing]
    response = acme.post(path, json=body)
    assert response.status_code == 422
    assert response.json()["error"] == {"code": "invalid_request", "field": missing,
                                        "message": f"{missing}: missing; this field is required"}


def test_a_job_says_whether_it_started_a_new_session(acme):
    """A client-named session that did not exist starts one (a mistyped id too): the job
    says so, on submission and when read."""
    first = submit(acme).json()
    assert first["new_session"] is True
    again = submit(acme, session_id=first["session_id"]).json()
    assert again["new_session"] is False
    assert acme.get(f"/v1/jobs/{again['id']}").json()["new_session"] is False
    assert submit(acme, session_id=first["session_id"] + "-typo").json()["new_session"] is True


def test_scaling_past_max_total_is_one_sentence_naming_the_field(stack):
    with stack.client("admin") as admin:
        response = admin.patch("/v1/pools/chatbot", json={"target_idle": 50})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "target_idle" and "50" in error["message"]
    assert "pydantic" not in error["message"] and "input_value" not in error["message"]
    assert "\n" not in error["message"] and error["message"].count(".") <= 1


def test_a_cancelled_job_counts_as_cancelled_in_jobs_total(stack, acme):
    def cancelled() -> float:
        text = httpx.get(stack.api_url + "/metrics").text
        line = next(line for line in text.splitlines()
                    if line.startswith('greenroom_jobs_total{') and 'outcome="cancelled"' in line)
        return float(line.rsplit(" ", 1)[1])

    before = cancelled()
    job = submit(acme).json()
    assert acme.delete(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    assert acme.delete(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"  # again: counted once
    assert cancelled() == before + 1
