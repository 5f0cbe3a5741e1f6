"""The OpenAPI document: our authentication classes taught to drf-spectacular (so /api/docs/ offers
Bearer auth), and the paths spelled exactly as the contract spells them."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class PlatformJWTScheme(OpenApiAuthenticationExtension):
    target_class = "backups.auth.PlatformJWTAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A JWT from the platform's Auth Service with the SUPER_ADMIN role.",
        }


class SuperuserSessionScheme(OpenApiAuthenticationExtension):
    target_class = "backups.auth.SuperuserSessionAuthentication"
    name = "adminSession"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": "sessionid",
            "description": "A Django superuser's admin session (CSRF token required for writes).",
        }


class SignedLinkScheme(OpenApiAuthenticationExtension):
    target_class = "backups.download_links.SignedLinkAuthentication"
    name = "signedLink"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "query",
            "name": "sig",
            "description": "A short-lived link from POST /api/backup/<id>/download-link.",
        }


# The pages and the probe that are not DRF views, described by hand so that the document's paths are
# exactly the contract's.
_JSON = "application/json"
EXTRA_PATHS: dict[str, dict[str, Any]] = {
    "/health": {
        "get": {
            "operationId": "health_retrieve",
            "summary": "Liveness and readiness: database, backup root, script, worker. No authentication.",
            "tags": ["health"],
            "security": [],
            "responses": {
                "200": {
                    "description": "ok or degraded",
                    "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Health"}}},
                },
                "503": {
                    "description": "error: the database is unreachable",
                    "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Health"}}},
                },
            },
        }
    },
    "/api/schema/": {
        "get": {
            "operationId": "schema_retrieve",
            "summary": "This OpenAPI 3 document (YAML; `?format=json` for JSON).",
            "tags": ["schema"],
            "responses": {
                "200": {
                    "description": "the OpenAPI document",
                    "content": {
                        "application/vnd.oai.openapi": {"schema": {"type": "object"}},
                        "application/vnd.oai.openapi+json": {"schema": {"type": "object"}},
                    },
                }
            },
        }
    },
    "/api/docs/": {
        "get": {
            "operationId": "docs_retrieve",
            "summary": "The interactive page of this document (Swagger UI, served by the service).",
            "tags": ["schema"],
            "responses": {"200": {"description": "an HTML page", "content": {"text/html": {"schema": {}}}}},
        }
    },
}
HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", "checks", "version", "uptime_seconds"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded", "error"]},
        "checks": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["ok"],
                "properties": {"ok": {"type": "boolean"}, "detail": {"type": "string"}},
            },
        },
        "version": {"type": "string"},
        "uptime_seconds": {"type": "number"},
    },
}


def contract_paths(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular hook: the API answers with or without a trailing slash, and the document spells
    every path as the contract does (none under /api/backup/), plus the non-DRF pages and probe."""
    paths = {
        (path.rstrip("/") if path.startswith("/api/backup/") else path): item
        for path, item in result.get("paths", {}).items()
    }
    paths.update(EXTRA_PATHS)
    result["paths"] = dict(sorted(paths.items()))
    result.setdefault("components", {}).setdefault("schemas", {})["Health"] = HEALTH_SCHEMA
    return result


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": 'DRF\'s error shapes: {"detail": "..."}, or {"field": ["message", ...]} '
    "(nested for documents).",
    "properties": {"detail": {"type": "string"}},
    "additionalProperties": True,
}
_ERROR = {"content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
ERRORS = {
    "400": "the request is malformed or a value is refused (nothing changed)",
    "401": "no token, or a token that is invalid, expired or badly signed",
    "403": "a valid token without the SUPER_ADMIN role",
    "404": "no such backup, run or file",
    "409": "refused in the current state: a run is queued or running, the backup is pinned or running, ...",
    "429": "too many requests: see Retry-After",
}


def error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular hook: every operation lists the errors the API really answers (schema fuzzers
    check undocumented status codes too); request bodies refuse unknown keys, which the document says."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, item in result.get("paths", {}).items():
        if path in EXTRA_PATHS:
            continue
        for method, operation in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            codes = ["400", "401", "403", "429"]
            if "{" in path:
                codes.append("404")
            if method in {"post", "put", "patch", "delete"}:
                codes.append("409")
            responses = operation.setdefault("responses", {})
            for code in codes:
                responses.setdefault(code, {"description": ERRORS[code], **_ERROR})
    for name, schema in result["components"]["schemas"].items():
        if name.endswith("Request") and schema.get("type") == "object":
            schema["additionalProperties"] = False
    return result
