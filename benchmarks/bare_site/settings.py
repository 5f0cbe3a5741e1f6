"""Settings of the bare reference site: what `django-admin startproject` writes (its apps and its
middleware), plus DRF with JSON only, no authentication and no database work. The serving limits are the
service's defaults, so `backups.server.uvicorn_config` builds the very same server."""

SECRET_KEY = "bare-reference-site-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "rest_framework",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "bare_site.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}  # never queried
USE_TZ = True
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}
LOGGING_CONFIG = None

# What backups.server.uvicorn_config reads (the service's defaults).
HEADER_TIMEOUT_SECONDS = 10
MAX_HEADER_BYTES = 64 * 1024
MAX_CONNECTIONS = 512
WS_PING_INTERVAL_SECONDS = 30.0
BEHIND_PROXY = False
FORWARDED_ALLOW_IPS = ["127.0.0.1", "::1"]
