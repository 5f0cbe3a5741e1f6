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
import sys
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
        if maximum is None:
            raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
        raise ImproperlyConfigured(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


def envpath(name: str, default: Path) -> Path:
    raw = env(name)
    path = Path(raw) if raw else default
    return path if path.is_absolute() else (BASE_DIR / path)


def masked_url(url: str) -> str:
    """A URL fit for a message: its password replaced by ****."""
    return re.sub(r"(://[^:/@\s]*):[^@/\s]*@", r"\1:****@", url)


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
    "backup_platform.apps.AdminConfig",
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
# Request threads are kept (backups.asgi_threads), and so is each one's connection: checked before a
# request reuses it (CONN_HEALTH_CHECKS), closed after a request that saw a database error, so a
# database restart costs 503s while it is down and nothing after it.
CONN_MAX_AGE = envint("CONN_MAX_AGE", 600, minimum=0)
try:
    DATABASES = {
        "default": dj_database_url.parse(DATABASE_URL, conn_max_age=CONN_MAX_AGE, conn_health_checks=True)
    }
except Exception:  # dj-database-url raises several kinds for a malformed URL
    raise ImproperlyConfigured(
        "DATABASE_URL is not a valid database URL "
        "(e.g. sqlite:////var/lib/backups/db.sqlite3 or postgres://user@127.0.0.1:5432/backups)"
    ) from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The worker thread and the web threads write concurrently: WAL plus a busy timeout instead of
    # "database is locked"; IMMEDIATE makes a writer take the lock at BEGIN, not at its first write.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    _sqlite = Path(DATABASES["default"]["NAME"])
    if _sqlite.parent.is_relative_to(VAR_DIR):
        _sqlite.parent.mkdir(parents=True, exist_ok=True)  # the embedded default's own folder
    elif not _sqlite.parent.is_dir():
        raise ImproperlyConfigured(
            f"DATABASE_URL names a SQLite file in a folder that does not exist: {_sqlite.parent} "
            "(create it, or point DATABASE_URL elsewhere)"
        )
    if not os.access(_sqlite if _sqlite.exists() else _sqlite.parent, os.W_OK):
        raise ImproperlyConfigured(f"DATABASE_URL names a SQLite database this user cannot write: {_sqlite}")
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
# Where each run's supervisor keeps the script's output and exit status, so a run outlives a restart.
BACKUP_STATE_DIR = envpath("BACKUP_STATE_DIR", VAR_DIR / "state")
BACKUP_RUN_TIMEOUT = envint("BACKUP_RUN_TIMEOUT", 21600, minimum=1)
SHUTDOWN_GRACE_SECONDS = envint("SHUTDOWN_GRACE_SECONDS", 30, minimum=0)
# Between SIGTERM and SIGKILL of the script's process group on cancel, timeout and shutdown.
BACKUP_KILL_GRACE_SECONDS = envint("BACKUP_KILL_GRACE_SECONDS", 10, minimum=0)
# How often the worker looks for queued runs, due schedules and changed folders.
WORKER_POLL_SECONDS = float(envint("WORKER_POLL_MS", 500, minimum=50)) / 1000
CATALOGUE_SYNC_SECONDS = envint("CATALOGUE_SYNC_SECONDS", 60, minimum=1)
WORKER_STALE_SECONDS = 60
# Deep verification restores each database dump into a scratch database on this PostgreSQL server
# (the service creates and drops databases there). Unset: deep verification reads and checks every
# archive and dump, without the restore-test.
RESTORE_TEST_DATABASE_URL = env("RESTORE_TEST_DATABASE_URL")
# A labelled demo dump (the reference script's, when PostgreSQL holds no such database) passes
# verification only when this is on: in production it means a backup without its database.
ALLOW_DEMO_DUMPS = envbool("ALLOW_DEMO_DUMPS", False)
# Nothing automatic (verification, off-site copy) starts in the first minutes after start-up.
AUTOMATIC_JOBS_DELAY_SECONDS = envint("AUTOMATIC_JOBS_DELAY_SECONDS", 180, minimum=0)
# Off-site copies (the config document's `offsite` section says where): the store's credentials, and
# the age identity that reads a copy back (downloads and restores of a backup whose folder is gone,
# rebuilding the catalogue). The identity is optional: without it a remote-only backup downloads as its
# encrypted objects with a README. It must be readable by the service only (like ssh's private keys).
OFFSITE_ACCESS_KEY_ID = env("OFFSITE_ACCESS_KEY_ID")
OFFSITE_SECRET_ACCESS_KEY = env("OFFSITE_SECRET_ACCESS_KEY")
OFFSITE_IDENTITY_FILE = env("OFFSITE_IDENTITY_FILE")


def check_private_file(name: str, raw: str) -> Path | None:
    """A file only its owner may read (a key): anything else stops start-up, naming the variable."""
    if not raw:
        return None
    path = Path(raw) if Path(raw).is_absolute() else BASE_DIR / raw
    try:
        info = path.stat()
    except OSError as error:
        raise ImproperlyConfigured(f"{name} cannot be read: {error.strerror}") from None
    if not path.is_file():
        raise ImproperlyConfigured(f"{name} must name a regular file")
    if info.st_mode & 0o077:
        raise ImproperlyConfigured(f"{name} must be readable by the service only (chmod 600)")
    return path


OFFSITE_IDENTITY_PATH = check_private_file("OFFSITE_IDENTITY_FILE", OFFSITE_IDENTITY_FILE)


_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def parse_named(name: str, raw: str, kind: str) -> dict[str, str]:
    """`name=value,name2=value2` (RESTORE_TARGETS: PostgreSQL URLs; RESTORE_DIRECTORIES: absolute
    paths). A malformed entry stops start-up naming the variable and the entry's name, never its URL
    (which may hold a password)."""
    named: dict[str, str] = {}
    for position, entry in enumerate((part.strip() for part in raw.split(",")), start=1):
        if not entry:
            continue
        label, sep, value = entry.partition("=")
        label, value = label.strip(), value.strip()
        if not sep or not _TARGET_NAME.fullmatch(label):
            raise ImproperlyConfigured(
                f"{name}: entry {position} must look like name=value, the name made of letters, digits, "
                "_ and - (at most 64)"
            )
        if label in named:
            raise ImproperlyConfigured(f"{name}: the name {label!r} is given twice")
        if kind == "database":
            try:
                parts = urlsplit(value)
                parts.port  # noqa: B018 - a bad port raises here
            except ValueError:
                raise ImproperlyConfigured(f"{name}: {label!r} is not a postgres:// URL") from None
            if parts.scheme not in ("postgres", "postgresql") or not parts.path.strip("/"):
                raise ImproperlyConfigured(
                    f"{name}: {label!r} must be a postgres://user@host:port/database URL naming its database"
                )
        elif not value.startswith("/"):
            raise ImproperlyConfigured(f"{name}: {label!r} must be an absolute path")
        named[label] = value
    return named


# Where restores may write, by name: a request names a target, never a URL or a path.
# RESTORE_TARGETS=staging=postgres://restorer:pw@db:5432/beauty_staging,scratch=postgres://…
# RESTORE_DIRECTORIES=staging=/srv/restore
RESTORE_TARGETS = parse_named("RESTORE_TARGETS", env("RESTORE_TARGETS"), "database")
RESTORE_DIRECTORIES = parse_named("RESTORE_DIRECTORIES", env("RESTORE_DIRECTORIES"), "files")
# Bytes per second an upload may read (0: as fast as the store takes them), so a nightly copy leaves
# the server's uplink to the platform.
OFFSITE_UPLOAD_BYTES_PER_SECOND = envint("OFFSITE_UPLOAD_BYTES_PER_SECOND", 0, minimum=0)
# The garbage collection leaves unreferenced objects younger than this alone: an upload elsewhere (a
# second service writing to the same prefix) may be about to name them.
OFFSITE_GC_GRACE_SECONDS = envint("OFFSITE_GC_GRACE_SECONDS", 6 * 3600, minimum=0)
# An automatic upload that failed for a passing reason (network, a store error) is tried again after
# this long, up to three times; a store that refuses (credentials, policy) is not retried.
OFFSITE_RETRY_SECONDS = envint("OFFSITE_RETRY_SECONDS", 900, minimum=0)
# Minimum free space in the backup root for test-script to call it ok.
MIN_FREE_BYTES = envint("MIN_FREE_BYTES", 1 << 30, minimum=0)
DOWNLOAD_ACCEL_PREFIX = env("DOWNLOAD_ACCEL_PREFIX")
DOWNLOAD_LINK_TTL = envint("DOWNLOAD_LINK_TTL", 300, minimum=10)
METRICS_TOKEN = env("METRICS_TOKEN")
HOST = env("HOST", "0.0.0.0")
PORT = envint("PORT", 6027, minimum=1, maximum=65535)

# --- serving limits (manage.py serve) ---------------------------------------------------------------

# A body above this is refused (413) from its Content-Length, before a byte of it is read; the API only
# takes small JSON documents.
MAX_REQUEST_BYTES = envint("MAX_REQUEST_BYTES", 1 << 20, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES
# Request line plus headers. Room for a `?file=` path deeper than PATH_MAX, far from a header bomb.
MAX_HEADER_BYTES = envint("MAX_HEADER_BYTES", 64 * 1024, minimum=8 * 1024, maximum=16 * 1024 * 1024)
# A connection that has not sent its complete headers this long after it opened (or after its previous
# response) is closed: slow-header (slowloris) clients cannot hold connections for ever.
HEADER_TIMEOUT_SECONDS = envint("HEADER_TIMEOUT_SECONDS", 10, minimum=1, maximum=3600)
# Connections (and requests in progress) one serve process accepts; beyond it new requests get 503.
MAX_CONNECTIONS = envint("MAX_CONNECTIONS", 512, minimum=8)

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
    "DEFAULT_PARSER_CLASSES": ["backups.api.parsers.JSONParser"],
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
        "backups.api.schema.error_responses",
    ],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "BackupStatusEnum": "backups.catalogue.models.BackupStatus",
        "RunStatusEnum": "backups.runs.models.RunStatus",
        "BackupTypeEnum": "backups.catalogue.models.BackupType",
        "RunTypeEnum": "backups.runs.models.RunType",
        "RunKindEnum": "backups.runs.models.RunKind",
        "VerificationStatusEnum": "backups.catalogue.models.VerificationStatus",
        "OffsiteStatusEnum": "backups.catalogue.models.OffsiteStatus",
        "RestoreTargetKindEnum": "backups.restore.targets.KINDS",
        "ArchiveMemberTypeEnum": "backups.restore.targets.MEMBER_TYPES",
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
BEHIND_PROXY = envbool("BEHIND_PROXY", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if BEHIND_PROXY else None
# X-Forwarded-For/-Proto are applied (by serve) only with BEHIND_PROXY=1, and only from these peers.
FORWARDED_ALLOW_IPS = envlist("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", SECURE_SSL_REDIRECT)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", SECURE_SSL_REDIRECT)
SESSION_COOKIE_HTTPONLY = True
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")
# Under /api/ a refused CSRF check answers in JSON like every other error (pages keep Django's).
CSRF_FAILURE_VIEW = "backups.api.errors.csrf_failure"

# --- channels, cache ------------------------------------------------------------------------------

REDIS_URL = env("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # Progress is coalesced to a few events a second; capacity is headroom for bursts.
            # redis-py's default 5 s socket timeout equals channels_redis' blocking read: an idle client's
            # read would time out and look like an outage. A longer timeout keeps idle sockets open.
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "capacity": 1000,
                "expiry": 30,
            },
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
# JSON lines for files, journald and log shippers; readable lines for a person at a terminal.
LOG_FORMAT = env("LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
if LOG_FORMAT not in {"console", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be console or json, got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "backups.logging.RequestIdFilter"},
        "no_colour": {"()": "backups.logging.DropColourMessage"},
    },
    "formatters": {
        "console": {
            "format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s",
            "datefmt": "%H:%M:%S",
        },
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "timestamp", "levelname": "level", "name": "logger"},
            "datefmt": "%Y-%m-%dT%H:%M:%S%z",
        },
    },
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id", "no_colour"],
        },
        "file": {
            "class": "logging.handlers.RotatingFileHandler",
            "filename": str(SERVICE_LOG),
            "maxBytes": SERVICE_LOG_MAX_BYTES,
            "backupCount": 5,
            "formatter": "json",
            "filters": ["request_id", "no_colour"],
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
