"""Settings of the backup service, read from the environment only here.

Every variable is listed with its default in `.env.example`. A `.env` file beside `manage.py` is read
when present; a real environment variable wins over it. A bad value stops start-up with
`ImproperlyConfigured` naming the variable.
"""

from __future__ import annotations

import binascii
import importlib.util
import os
import re
import secrets
import socket
from base64 import b64decode
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv(BASE_DIR / ".env", override=False)

# --- tiny helpers ---------------------------------------------------------------------------------


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def envbool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def envint(name: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ImproperlyConfigured(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


def envpath(name: str, default: Path) -> Path:
    raw = env(name)
    path = Path(raw) if raw else default
    return path if path.is_absolute() else (BASE_DIR / path)


def parse_rate(name: str, raw: str) -> tuple[int, int]:
    """`200/15m` -> (200, 900): how many requests per how many seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*", raw)
    if not match or int(match.group(1)) < 1 or match.group(2) == "0":
        raise ImproperlyConfigured(f"{name} must look like 200/15m (<count>/<n><s|m|h|d>), got {raw!r}")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(3)]
    return int(match.group(1)), int(match.group(2) or 1) * unit


def parse_email_url(name: str, raw: str) -> dict[str, object]:
    """Django's e-mail settings from one URL: `smtp://user:pass@host:587?tls=1` (STARTTLS),
    `smtp+ssl://user:pass@host:465` (TLS from the start; `smtps://` too), `console://` (printed to
    stdout, for trying it out). The password is never part of an error message."""
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name} is not a URL like smtp://user:password@host:587?tls=1") from None
    scheme = parts.scheme.lower()
    if scheme == "console":
        return {"EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"}
    if scheme not in ("smtp", "smtp+tls", "smtp+ssl", "smtps"):
        raise ImproperlyConfigured(
            f"{name} must start with smtp://, smtp+tls://, smtp+ssl://, smtps:// or console://, "
            f"got {scheme!r}"
        )
    if not parts.hostname:
        raise ImproperlyConfigured(f"{name} needs a host name (smtp://user:password@host:587)")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    ssl = scheme in ("smtp+ssl", "smtps") or query.get("ssl", "") in ("1", "true", "yes")
    tls = not ssl and (scheme == "smtp+tls" or query.get("tls", "") in ("1", "true", "yes"))
    return {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": parts.hostname,
        "EMAIL_PORT": port or (465 if ssl else 587 if tls else 25),
        "EMAIL_HOST_USER": unquote(parts.username or ""),
        "EMAIL_HOST_PASSWORD": unquote(parts.password or ""),
        "EMAIL_USE_SSL": ssl,
        "EMAIL_USE_TLS": tls,
    }


def check_webhook_secret(name: str, raw: str) -> str:
    """`whsec_<base64>` (the Standard Webhooks form) must decode; any other non-empty string is used as
    it is (see `notifications.transports.webhook_key`)."""
    if raw.startswith("whsec_"):
        encoded = raw[len("whsec_") :]
        try:
            if not b64decode(encoded + "=" * (-len(encoded) % 4), validate=True):
                raise ValueError
        except (binascii.Error, ValueError):
            raise ImproperlyConfigured(f"{name} starts with whsec_ but the rest is not base64") from None
    return raw


def read_or_create_secret(path: Path) -> str:
    """A random secret kept in `var/` so that tokens survive restarts of an embedded install."""
    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


# --- Django core ----------------------------------------------------------------------------------

VAR_DIR = BASE_DIR / "var"
DEBUG = envbool("DEBUG", False)
SECRET_KEY = env("SECRET_KEY") or read_or_create_secret(VAR_DIR / "django-secret")
# Plain HTTP on loopback keeps working with DEBUG off: these are the embedded defaults.
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
if DEBUG and "ALLOWED_HOSTS" not in os.environ:
    ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files served by the service itself, not from a CDN
    "channels",
    "backups",
]
if importlib.util.find_spec("daphne") is not None:
    # A development tool (requirements-dev.txt): `runserver` becomes an ASGI server. The service itself
    # runs on uvicorn (`manage.py serve`), which streams downloads with back-pressure.
    INSTALLED_APPS.insert(0, "daphne")

MIDDLEWARE = [
    "backups.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "backups.middleware.RateLimitMiddleware",
    "backups.middleware.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "backup_platform.urls"
ASGI_APPLICATION = "backup_platform.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASE_URL = env("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
try:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0, conn_health_checks=True)}
except Exception as error:  # dj-database-url raises several kinds for a malformed URL
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {error}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The worker thread and the web threads write concurrently: WAL plus a busy timeout instead of
    # "database is locked"; IMMEDIATE makes a writer take the lock at BEGIN, not at its first write.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TZ") or "UTC"
USE_TZ = True
USE_I18N = False

STATIC_URL = "/static/"
STATIC_ROOT = envpath("STATIC_ROOT", BASE_DIR / "staticfiles")

# --- backups --------------------------------------------------------------------------------------

BACKUP_SCRIPT = envpath("BACKUP_SCRIPT", BASE_DIR / "scripts" / "production-backup.sh")
BACKUP_ROOT = envpath("BACKUP_ROOT", VAR_DIR / "backups" / "production")
BACKUP_SCRIPT_LOG = envpath("BACKUP_SCRIPT_LOG", VAR_DIR / "log" / "beauty-backup.log")
SERVICE_LOG = envpath("SERVICE_LOG", VAR_DIR / "log" / "backup-service.log")
BACKUP_RUN_TIMEOUT = envint("BACKUP_RUN_TIMEOUT", 21600, minimum=1)
SHUTDOWN_GRACE_SECONDS = envint("SHUTDOWN_GRACE_SECONDS", 30, minimum=0)
# Between SIGTERM and SIGKILL of the script's process group on cancel, timeout and shutdown.
BACKUP_KILL_GRACE_SECONDS = envint("BACKUP_KILL_GRACE_SECONDS", 10, minimum=0)
BACKUP_COMPRESSION_LEVEL = envint("BACKUP_COMPRESSION_LEVEL", 6, minimum=1, maximum=9)
# How often the worker looks for queued runs, due schedules and changed folders.
WORKER_POLL_SECONDS = float(envint("WORKER_POLL_MS", 500, minimum=50)) / 1000
CATALOGUE_SYNC_SECONDS = envint("CATALOGUE_SYNC_SECONDS", 60, minimum=1)
WORKER_STALE_SECONDS = 60
# Minimum free space in the backup root for test-script to call it ok.
MIN_FREE_BYTES = envint("MIN_FREE_BYTES", 1 << 30, minimum=0)
DOWNLOAD_ACCEL_PREFIX = env("DOWNLOAD_ACCEL_PREFIX")
DOWNLOAD_LINK_TTL = envint("DOWNLOAD_LINK_TTL", 300, minimum=10)
METRICS_TOKEN = env("METRICS_TOKEN")
HOST = env("HOST", "0.0.0.0")
PORT = envint("PORT", 6027, minimum=1, maximum=65535)

# --- notifications --------------------------------------------------------------------------------

# The key that signs webhook deliveries (Standard Webhooks); without it the webhook is not called.
WEBHOOK_SECRET = check_webhook_secret("WEBHOOK_SECRET", env("WEBHOOK_SECRET"))
# Where e-mail notifications go out; without it they are not sent (and the deliveries say why).
EMAIL_URL = env("EMAIL_URL")
if EMAIL_URL:
    globals().update(parse_email_url("EMAIL_URL", EMAIL_URL))
DEFAULT_FROM_EMAIL = env("EMAIL_FROM", "backup-service@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
EMAIL_TIMEOUT = 10
# Shown in every notification's title, so that a message from one of several servers says which.
NOTIFICATION_SOURCE = env("NOTIFICATION_SOURCE") or socket.gethostname()

# --- auth -----------------------------------------------------------------------------------------

JWT_ALGORITHM = env("JWT_ALGORITHM", "HS256")
if JWT_ALGORITHM not in {"HS256", "HS384", "HS512", "RS256", "ES256"}:
    raise ImproperlyConfigured(
        f"JWT_ALGORITHM must be one of HS256/HS384/HS512/RS256/ES256, got {JWT_ALGORITHM!r}"
    )
JWT_SECRET = env("JWT_SECRET") or read_or_create_secret(VAR_DIR / "jwt-secret")
JWT_PUBLIC_KEY = env("JWT_PUBLIC_KEY").replace("\\n", "\n")
JWT_JWKS_URL = env("JWT_JWKS_URL")
if JWT_ALGORITHM[:2] in {"RS", "ES"} and not (JWT_PUBLIC_KEY or JWT_JWKS_URL):
    raise ImproperlyConfigured(
        f"JWT_PUBLIC_KEY or JWT_JWKS_URL is required with JWT_ALGORITHM={JWT_ALGORITHM}"
    )
JWT_ISSUER = env("JWT_ISSUER") or None
JWT_AUDIENCE = env("JWT_AUDIENCE") or None
JWT_ROLE_CLAIM = env("JWT_ROLE_CLAIM", "role")
JWT_USER_ID_CLAIM = env("JWT_USER_ID_CLAIM", "sub")
JWT_LEEWAY_SECONDS = envint("JWT_LEEWAY_SECONDS", 30, minimum=0, maximum=600)
SUPER_ADMIN_ROLE = "SUPER_ADMIN"

SIMPLE_JWT = {
    "ALGORITHM": JWT_ALGORITHM,
    "SIGNING_KEY": JWT_SECRET if JWT_ALGORITHM.startswith("HS") else "",
    "VERIFYING_KEY": JWT_PUBLIC_KEY or None,
    "JWK_URL": JWT_JWKS_URL or None,
    "AUDIENCE": JWT_AUDIENCE,
    "ISSUER": JWT_ISSUER,
    "LEEWAY": JWT_LEEWAY_SECONDS,
    "USER_ID_CLAIM": JWT_USER_ID_CLAIM,
    "AUTH_HEADER_TYPES": ("Bearer",),
    # Tokens of the platform's Auth Service carry neither a token type nor a jti.
    "TOKEN_TYPE_CLAIM": None,
    "JTI_CLAIM": None,
    "AUTH_TOKEN_CLASSES": ("rest_framework_simplejwt.tokens.UntypedToken",),
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "backups.auth.PlatformJWTAuthentication",
        "backups.auth.SuperuserSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["backups.api.permissions.IsSuperAdmin"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "backups.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Backup Service API",
    "DESCRIPTION": "List, create, watch, download, delete and configure the platform's backups.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["backups.api.permissions.IsSuperAdmin"],
    "SERVE_AUTHENTICATION": [
        "backups.auth.PlatformJWTAuthentication",
        "backups.auth.SuperuserSessionAuthentication",
    ],
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "backups.api.schema.contract_paths",
    ],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "BackupStatusEnum": "backups.catalogue.models.BackupStatus",
        "RunStatusEnum": "backups.runs.models.RunStatus",
        "BackupTypeEnum": "backups.catalogue.models.BackupType",
        "RunTypeEnum": "backups.runs.models.RunType",
    },
}

# --- protection -----------------------------------------------------------------------------------

RATE_LIMIT = env("RATE_LIMIT", "200/15m")
RATE_LIMIT_COUNT, RATE_LIMIT_PERIOD = parse_rate("RATE_LIMIT", RATE_LIMIT)
CORS_ALLOWED_ORIGINS = envlist("CORS_ALLOWED_ORIGINS")
CORS_ALLOW_HEADERS = ("accept", "authorization", "content-type", "x-csrftoken", "x-request-id")
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if envbool("BEHIND_PROXY", False) else None
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", SECURE_SSL_REDIRECT)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", SECURE_SSL_REDIRECT)
SESSION_COOKIE_HTTPONLY = True
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")

# --- channels, cache ------------------------------------------------------------------------------

REDIS_URL = env("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # Progress is coalesced to a few events a second; capacity is headroom for bursts.
            "CONFIG": {"hosts": [REDIS_URL], "capacity": 1000, "expiry": 30},
        }
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

WS_AUTH_TIMEOUT_SECONDS = 10.0
WS_PING_INTERVAL_SECONDS = 30.0

# --- logging --------------------------------------------------------------------------------------

SERVICE_LOG_MAX_BYTES = envint("SERVICE_LOG_MAX_BYTES", 10 * 1024 * 1024, minimum=1024)
SERVICE_LOG.parent.mkdir(parents=True, exist_ok=True)
LOG_LEVEL = env("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "backups.logging.RequestIdFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "timestamp", "levelname": "level", "name": "logger"},
            "datefmt": "%Y-%m-%dT%H:%M:%S%z",
        }
    },
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["request_id"]},
        "file": {
            "class": "logging.handlers.RotatingFileHandler",
            "filename": str(SERVICE_LOG),
            "maxBytes": SERVICE_LOG_MAX_BYTES,
            "backupCount": 5,
            "formatter": "json",
            "filters": ["request_id"],
            "delay": True,
        },
    },
    "root": {"handlers": ["stdout", "file"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "django.channels.server": {"level": "WARNING"},
        "uvicorn.access": {"level": "WARNING"},
    },
}

SILENCED_SYSTEM_CHECKS: list[str] = []
