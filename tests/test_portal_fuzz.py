"""Schemathesis against the portal's OpenAPI document, in-process (ASGI), on the real test
server: whatever a client sends, the API answers with a 4xx it describes, never a 5xx."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from hub.portal.app import PortalSettings, create_app  # noqa: E402
from hub.service import FarmService  # noqa: E402

SECRET = "fuzz-secret-key-for-the-portal-0123456789"
# Each example is a request to the portal and the server: an eighth of the Hypothesis
# profile's budget (25 under "ci", 125 under "fuzz"); the seed comes from the profile too.
MAX_EXAMPLES = settings().max_examples // 8


@pytest.fixture(scope="module")
def fuzz_app(farm):
    service = FarmService(farm.hub, farm.db)
    service.add_task(
        "acme", "ping", {"kind": "demo.sleep", "input": {"ms": 5}, "schedule": {"every": 60}}
    )
    service.run_now("acme", "ping")
    # The results feed waits and streams for as long as asked (up to a minute, an hour):
    # capped here so the fuzzer's long waits cost a fraction of a second.
    quick = PortalSettings(secret_key=SECRET, results_wait_cap_s=0.2, results_stream_cap_s=0.3)
    return create_app(service, farm.hub, secret_key=SECRET, settings=quick)


@pytest.fixture(scope="module")
def bearer(fuzz_app, farm) -> dict[str, str]:
    from fastapi.testclient import TestClient

    client = TestClient(fuzz_app)
    reply = client.post("/login", data={"username": "acme", "password": farm.passwords["acme"]})
    client.headers["X-CSRF-Token"] = reply.json()["csrf_token"]
    token = client.post("/api/tokens", json={"name": "fuzz"}).json()["token"]
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/api/openapi.json", fuzz_app)


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every API operation; the app is built without touching CouchDB."""
    from hub.protocol.couch import Couch

    offline = FarmService(Couch("http://127.0.0.1:9"), "offline")
    spec = create_app(offline, lambda name, password: None, secret_key=SECRET).openapi()
    return [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]


OPERATIONS = _operations()


# (schemathesis.pytest.from_fixture does not run on pytest 9, so each operation's
# strategy is driven with hypothesis directly.)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_never_answers_5xx(api_schema, bearer, method, path, mode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        response = case.call(headers=dict(bearer))
        case.validate_response(response, checks=[not_a_server_error])
        # The token is good: a 401 would mean the fuzzing never got past authentication
        # (negative cases may drop the Authorization header on purpose).
        if mode == GenerationMode.POSITIVE and path != "/login":
            assert response.status_code != 401, response.text

    run()


def _revoke_other_tokens(app, bearer: dict[str, str]) -> None:
    """The tests above create tokens; with a bigger budget ("fuzz") they fill acme's store
    (MAX_TOKENS), and every token the workflow creates would be a 409, never a 201."""
    from fastapi.testclient import TestClient

    from hub.portal.security import token_hash

    client = TestClient(app, headers=bearer)
    own = token_hash(bearer["Authorization"].removeprefix("Bearer "))
    for token in client.get("/api/tokens").json()["tokens"]:
        if token["id"] != own:
            assert client.delete(f"/api/tokens/{token['id']}").status_code == 200


def test_openapi_lists_the_api(fuzz_app):
    from fastapi.testclient import TestClient

    spec = TestClient(fuzz_app).get("/api/openapi.json").json()
    paths = set(spec["paths"])
    for path in (
        "/login", "/api/tasks", "/api/tasks/{name}", "/api/tasks/{name}/occurrences",
        "/api/tasks/{name}/results.csv", "/api/tasks/{name}/pause", "/api/tasks/{name}/kick",
        "/api/tokens", "/api/tokens/{token_id}",
    ):  # fmt: skip
        assert path in paths, path
    assert not any(p.startswith("/tasks") for p in paths)  # pages stay out of the API document
    assert "bearer" in str(spec["components"]["securitySchemes"]).lower()


def test_api_workflows_never_answer_5xx(fuzz_app, api_schema, bearer):
    """Stateful: create a task, then use its name in the calls its response links to."""
    _revoke_other_tokens(fuzz_app, bearer)
    workflow = api_schema.as_state_machine()
    statuses: list[int] = []

    class Workflow(workflow):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case):
            return {"headers": dict(bearer)}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            statuses.append(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

    Workflow.run(
        settings=settings(
            max_examples=MAX_EXAMPLES * 3 // 5,
            stateful_step_count=6,
            suppress_health_check=list(HealthCheck),
        )
    )
    assert 201 in statuses and 200 in statuses, sorted(set(statuses))
