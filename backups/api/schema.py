"""Teach drf-spectacular our authentication classes, so /api/docs/ offers Bearer auth."""

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
