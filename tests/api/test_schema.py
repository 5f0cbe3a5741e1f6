"""The OpenAPI document describes exactly the contract's endpoints: every path and method of the
contract is in it, and nothing else is (generated clients and schema fuzzers follow the document)."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.django_db

# The endpoints the service promises (the README's API tables), spelled as there: `<name>` is a parameter.
CONTRACT: dict[str, set[str]] = {
    "/health": {"get"},
    "/api/backup/status": {"get"},
    "/api/backup/list": {"get"},
    "/api/backup/<id>": {"get", "delete"},
    "/api/backup/create": {"post"},
    "/api/backup/<id>/download": {"get"},
    "/api/backup/logs": {"get"},
    "/api/backup/config": {"get", "put", "patch"},
    "/api/backup/test-script": {"post"},
    "/api/backup/runs": {"get"},
    "/api/backup/runs/<run id>": {"get"},
    "/api/backup/runs/<run id>/cancel": {"post"},
    "/api/backup/<id>/verify": {"post"},
    "/api/backup/notifications/deliveries": {"get"},
    "/api/backup/notifications/test": {"post"},
    "/api/backup/retention/preview": {"get", "post"},
    "/api/backup/retention/apply": {"post"},
    "/api/backup/<id>/offsite": {"post"},
    "/api/backup/<id>/contents": {"get"},
    "/api/backup/restore/targets": {"get"},
    "/api/backup/<id>/restore": {"post"},
    "/api/schema/": {"get"},
    "/api/docs/": {"get"},
}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def normalized(path: str) -> str:
    """`<run id>` and `{id}` are both "a parameter here"."""
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


@pytest.fixture
def document(api) -> dict:
    response = api.get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def test_every_documented_path_is_a_contract_path_and_the_other_way_round(document):
    documented = {normalized(path) for path in document["paths"]}
    contract = {normalized(path) for path in CONTRACT}
    assert documented - contract == set(), "documented but not in the contract"
    assert contract - documented == set(), "in the contract but not documented"


def test_every_path_documents_exactly_the_contract_methods(document):
    by_path = {
        normalized(path): {m for m in item if m in METHODS} for path, item in document["paths"].items()
    }
    for path, methods in CONTRACT.items():
        assert by_path[normalized(path)] == methods, path


def test_no_backup_path_is_documented_with_a_trailing_slash(document):
    assert [
        path for path in document["paths"] if path.startswith("/api/backup/") and path.endswith("/")
    ] == []


def test_the_interactive_page_loads_its_assets_from_the_service(admin_client):
    page = admin_client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "swagger-ui" in html
    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html
    assets = re.findall(r'(?:src|href)="(/static/drf_spectacular_sidecar/[^"]+)"', html)
    assert assets, "Swagger UI's files must be served under /static/"
    for asset in assets:
        assert admin_client.get(asset).status_code == 200, asset


def test_every_operation_documents_the_errors_it_can_answer(document):
    for path, item in document["paths"].items():
        if path in ("/health", "/api/schema/", "/api/docs/"):
            continue
        for method, operation in item.items():
            if method not in METHODS:
                continue
            codes = set(operation["responses"])
            assert {"400", "401", "403", "429"} <= codes, (method, path, codes)
            if "{" in path:
                assert "404" in codes, (method, path)
            if method != "get":
                assert "409" in codes, (method, path)


def test_request_bodies_refuse_unknown_keys_and_say_so(document, api):
    requests = {
        name: schema for name, schema in document["components"]["schemas"].items() if name.endswith("Request")
    }
    assert requests and all(schema.get("additionalProperties") is False for schema in requests.values())
    assert api.post("/api/backup/create", {"typo": 1}, format="json").status_code == 400


def test_the_page_size_bounds_are_documented(document):
    parameters = document["paths"]["/api/backup/list"]["get"]["parameters"]
    [page_size] = [p for p in parameters if p["name"] == "page_size"]
    assert page_size["schema"]["minimum"] == 1 and page_size["schema"]["maximum"] == 500


@pytest.mark.parametrize("query", ["source=", "lines=", "source=&lines=5"])
def test_an_empty_query_value_is_a_400_not_the_default(api, backup_root, query):
    response = api.get(f"/api/backup/logs?{query}")
    assert response.status_code == 400 and response.json()
