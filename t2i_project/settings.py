"""Settings for the render-farm scheduler. Everything a deployment changes comes from the environment."""

import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE as CSP_NONE
from csp.constants import SELF as CSP_SELF
from django.core.exceptions import ImproperlyConfigured

from t2i_project import envfile
from t2i_project.env import (
    env_bool,
    env_float,
    env_int,
    env_list,
    env_networks,
    env_proxies,
    env_rate,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
# Local use: the checkout's .env (`make run` writes one with a SECRET_KEY) fills in what the environment does
# not set; a real variable always wins. T2I_ENV_FILE names another file, or none when empty (the tests).
try:
    envfile.load(env_str("T2I_ENV_FILE", str(BASE_DIR / ".env")))
except (OSError, ValueError) as exc:
    raise ImproperlyConfigured(f"Cannot read the environment file: {exc}")

DEBUG = env_bool("DEBUG", False)
# Required outside DEBUG. The worker daemon and the simulator (manage.py sets T2I_STANDALONE_COMMAND) sign
# nothing and may run without one: they get a random key per process, so that variable set by mistake on a
# server can never leave it signing sessions with a key that is printed here.
_DEV_KEY = "dev-only-insecure-key-do-not-deploy"
_STANDALONE = env_bool("T2I_STANDALONE_COMMAND", False)
if DEBUG:
    SECRET_KEY = env_str("SECRET_KEY", _DEV_KEY)
elif _STANDALONE:
    SECRET_KEY = env_str("SECRET_KEY", "") or secrets.token_urlsafe(50)
else:
    SECRET_KEY = env_str("SECRET_KEY", "")
    if not SECRET_KEY.strip() or SECRET_KEY == _DEV_KEY:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when DEBUG is off: set it to a long random string, e.g. the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(50))'. For local use, `make run` (or "
            "python -m t2i_project.envfile) writes one into this checkout's .env."
        )
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",  # its `runserver` serves the ASGI application: long polls wait as they do in production
    "t2i_project.console.FarmAdminConfig",  # Django's admin as the farm's console
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "workers_app",
    "generation",
]

MIDDLEWARE = [
    # First: a ComfyUI URL key leaves the path before URL resolution and any log line (generation.comfy_keys).
    "generation.comfy_keys.ComfyKeyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "t2i_project.static_files.StaticFilesMiddleware",  # servestatic's, in either mode
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "t2i_project.urls"
WSGI_APPLICATION = "t2i_project.wsgi.application"
ASGI_APPLICATION = "t2i_project.asgi.application"

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
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------------
# SQLite by default (WAL, IMMEDIATE transactions so concurrent writers queue on the busy timeout instead of
# failing with "database is locked"); PostgreSQL via DATABASE_URL for real deployments, through a connection
# pool per server process (DB_POOL_SIZE connections at most): the number of connections depends on the
# server's configuration, never on the number of workers (README, "Sizing").
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
DB_POOL_SIZE = env_int("DB_POOL_SIZE", 8, minimum=0)  # 0: no pool, a connection per thread (DB_CONN_MAX_AGE)
_pooled = DATABASE_URL.startswith(("postgres:", "postgresql:", "pgsql:")) and DB_POOL_SIZE > 0
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=0 if _pooled else env_int("DB_CONN_MAX_AGE", 60, minimum=0),
        conn_health_checks=True,  # with the pool: it checks a connection before handing it out
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
elif DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured("DATABASE_URL must point at SQLite or PostgreSQL.")
elif env_bool("DB_PREPARED_STATEMENTS", True):
    # PostgreSQL: parameters bound by the server, and a statement a connection has run twice is prepared,
    # so the hot path's statements are no longer parsed and planned on every call, which was most of
    # PostgreSQL's CPU per lease+complete cycle (bench/README.md). Django leaves this off because it breaks
    # transaction-mode poolers (PgBouncer): set DB_PREPARED_STATEMENTS=0 behind one.
    DATABASES["default"]["OPTIONS"] = {"server_side_binding": True, "prepare_threshold": 2}
if _pooled:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,  # one warm connection per process; more only while requests need them
        "max_size": DB_POOL_SIZE,
        "timeout": env_float("DB_POOL_TIMEOUT", 10.0, minimum=0.1),  # then a 503 the caller retries
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# --- Web site (generation/web_urls.py, namespace "web"): where sign-in sends people -------------------------
LOGIN_URL = "web:login"
LOGIN_REDIRECT_URL = "web:generate"
LOGOUT_REDIRECT_URL = "web:generate"
# --- end of web site block

LANGUAGE_CODE = "en-us"
FORMAT_MODULE_PATH = ["t2i_project.formats"]  # timestamps with seconds
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / "media")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "servestatic.storage.CompressedManifestStaticFilesStorage"
    },
}
SERVESTATIC_USE_FINDERS = True

# Request size limits: JSON bodies stay small; image uploads are capped per file by T2I_MAX_IMAGE_BYTES.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
# Where larger uploads are spooled (the system's temporary folder when empty); the orphaned-files job removes
# what a killed request left there.
FILE_UPLOAD_TEMP_DIR = env_str("T2I_UPLOAD_TEMP_DIR", "") or None

# Cookies are secure whenever DEBUG is off (LAN deployments behind TLS set SECURE_* via the proxy).
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto itself (docs/deployment.md): trust it for
# request.is_secure(). Off by default: without such a proxy any client could claim HTTPS.
if env_bool("T2I_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp) on every answer: scripts only from this server, never inline (the
# pages, the admin and the API docs, tests/security/test_csp.py); inline styles stay allowed, which the admin
# and Swagger UI use and which cannot run code.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [CSP_SELF],
        "script-src": [CSP_SELF],
        "style-src": [CSP_SELF, "'unsafe-inline'"],
        "img-src": [CSP_SELF, "data:"],
        "font-src": [CSP_SELF, "data:"],
        "connect-src": [CSP_SELF],
        "object-src": [CSP_NONE],
        "base-uri": [CSP_SELF],
        "form-action": [CSP_SELF],
        "frame-ancestors": [CSP_NONE],
    }
}
SECURE_CONTENT_TYPE_NOSNIFF = True

# --- REST API -------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: a call without credentials gets 401 with `WWW-Authenticate: Token` (what token clients
    # expect), not the 403 that session authentication answers.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "generation.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "generation.api_errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append("rest_framework.renderers.BrowsableAPIRenderer")

SPECTACULAR_SETTINGS = {
    "TITLE": "ComfyUI render farm scheduler API",
    "DESCRIPTION": "Submit text-to-image tasks, follow them, and lease them to worker daemons.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Everything from this server (the sidecar package), nothing from a CDN: no online validator badge.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "/favicon.ico",
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "TaskStatusEnum": "generation.models.Task.Status",
        "WorkerStatusEnum": "workers_app.models.Worker.Status",
    },
}

# --- The farm -------------------------------------------------------------------------------------------
T2I = {
    "HEARTBEAT_INTERVAL": env_float("T2I_HEARTBEAT_INTERVAL", 5.0, minimum=0.1),
    "WORKER_OFFLINE_AFTER": env_float("T2I_WORKER_OFFLINE_AFTER", 15.0, minimum=0.3),
    "LEASE_SECONDS": env_float("T2I_LEASE_SECONDS", 30.0, minimum=0.5),
    "MAX_ATTEMPTS": env_int("T2I_MAX_ATTEMPTS", 3, minimum=1, maximum=100),
    "LEASE_MAX_WAIT": env_float("T2I_LEASE_MAX_WAIT", 30.0, minimum=0, maximum=120),
    "REAP_EVERY": env_float("T2I_REAP_EVERY", 1.0, minimum=0),
    # PostgreSQL LISTEN/NOTIFY wakes long-polling lease requests across server processes at once.
    "LISTEN_NOTIFY": env_bool("T2I_LISTEN_NOTIFY", True),
    "ALLOW_ANONYMOUS_SUBMIT": env_bool("T2I_ALLOW_ANONYMOUS_SUBMIT", False),
    # The seed's POST /complete may omit the lease token (the worker's own lease on the task is used).
    "SEED_COMPLETE_WITHOUT_LEASE": env_bool("T2I_SEED_COMPLETE_WITHOUT_LEASE", True),
    "DEFAULT_TEMPLATE": env_str("T2I_DEFAULT_TEMPLATE", "sd15-txt2img"),
    "DEFAULT_CHECKPOINT": env_str("T2I_DEFAULT_CHECKPOINT", ""),
    "SIZE_MIN": env_int("T2I_SIZE_MIN", 64, minimum=8),
    "SIZE_MAX": env_int("T2I_SIZE_MAX", 2048, minimum=64),
    "SIZE_MULTIPLE": env_int("T2I_SIZE_MULTIPLE", 8, minimum=1),
    "PROMPT_MAX_LENGTH": env_int("T2I_PROMPT_MAX_LENGTH", 4000, minimum=1),
    "STEPS_MAX": env_int("T2I_STEPS_MAX", 150, minimum=1, maximum=10000),
    "BATCH_MAX": env_int("T2I_BATCH_MAX", 8, minimum=1, maximum=64),
    "MAX_IMAGE_BYTES": env_int("T2I_MAX_IMAGE_BYTES", 50 * 1024 * 1024, minimum=1024),
    # All the images of one completion together (every output of a multi-output workflow counts), checked
    # from the request's length before it is read and again from the files' sizes.
    "MAX_TASK_UPLOAD_BYTES": env_int("T2I_MAX_TASK_UPLOAD_BYTES", 256 * 1024 * 1024, minimum=1024),
    # Uploads of one worker at once, across server processes (generation.services.completion_slots).
    "MAX_CONCURRENT_COMPLETIONS": env_int("T2I_MAX_CONCURRENT_COMPLETIONS", 2, minimum=1, maximum=64),
    # Below this much free space on the media storage, completions are refused (507) rather than fill it.
    "MEDIA_MIN_FREE_BYTES": env_int("T2I_MEDIA_MIN_FREE_BYTES", 512 * 1024 * 1024, minimum=0),
    # A worker's ComfyUI /object_info (workers_app.models.ObjectInfoSpec), as sent and once unpacked: real
    # installs answer 1-5 MB, with many custom nodes more.
    "OBJECT_INFO_MAX_BYTES": env_int("T2I_OBJECT_INFO_MAX_BYTES", 32 * 1024 * 1024, minimum=1024),
    "SIGNUP_ENABLED": env_bool("T2I_SIGNUP_ENABLED", True),
    # Submits per user (per address for anonymous submits) in each window, as (count, seconds): one count for
    # the web form, the REST API and the seed's POST /generate, kept in the shared cache (CACHES below).
    "SUBMIT_RATE": env_rate("T2I_SUBMIT_RATE", "120/min"),
    # Workers silent for longer are left out of what people are offered (checkpoint, sampler, scheduler
    # lists): one that reported thousands of names and went away stops shaping every page.
    "WORKER_CHOICES_HOURS": env_float("T2I_WORKER_CHOICES_HOURS", 24.0, minimum=0.01),
    # Reverse proxies whose X-Forwarded-For is believed (generation.client_address): their count, or their
    # networks. Off by default: the client is REMOTE_ADDR, and X-Forwarded-For is ignored.
    "TRUSTED_PROXIES": env_proxies("T2I_TRUSTED_PROXIES"),
}
# Scheduling (generation.placement): "smart" places by expected finish time with fair share between users;
# "fifo" is the old rule (highest priority, then oldest), kept for comparison. Queued tasks per user: 0 = any.
T2I["SCHEDULER"] = env_str("T2I_SCHEDULER", "smart")
if T2I["SCHEDULER"] not in ("fifo", "smart"):
    raise ImproperlyConfigured("T2I_SCHEDULER must be fifo or smart.")
T2I["MAX_QUEUED_PER_USER"] = env_int("T2I_MAX_QUEUED_PER_USER", 0, minimum=0)
if T2I["SIZE_MIN"] > T2I["SIZE_MAX"]:
    raise ImproperlyConfigured("T2I_SIZE_MIN must not exceed T2I_SIZE_MAX.")

# --- The shared cache and the job broker -----------------------------------------------------------------
# Every server process and instance must see the same counts (the completion slots, slow webhook receivers;
# the submit limit counts in the database, generation.services.submit_limit), so the cache is never a
# process's memory: Redis when T2I_REDIS_URL is set (Q_REDIS_URL, its older name, still works), which is then
# also django-q2's broker; otherwise the database, whose cache table `migrate` makes (generation.apps), and
# django-q2's ORM broker. Nothing else needs to run.
_redis_urls = {env_str("T2I_REDIS_URL", ""), env_str("Q_REDIS_URL", "")} - {""}
if len(_redis_urls) > 1:
    raise ImproperlyConfigured("T2I_REDIS_URL and Q_REDIS_URL (its old name) differ: set T2I_REDIS_URL only.")
REDIS_URL = _redis_urls.pop() if _redis_urls else ""
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "t2i",
            # Redis down is a quick 503 the caller retries, not a request hanging on a dead socket.
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2},
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "t2i_cache",
            # Django counts the table's rows on every write, so it stays small: above this many rows the
            # expired ones are deleted, then a third of the rest (a completion slot among them would be
            # freed early; a farm with this many completions in flight wants Redis).
            "OPTIONS": {"MAX_ENTRIES": 5000},
        }
    }

# --- Background jobs (django-q2) ------------------------------------------------------------------------
Q_CLUSTER = {
    "name": "t2i",
    "workers": env_int("Q_WORKERS", 2, minimum=1),
    "timeout": 120,
    "retry": 180,
    "catch_up": False,
    "orm": "default",
    "save_limit": 1000,
}
if REDIS_URL:
    Q_CLUSTER.pop("orm")
    Q_CLUSTER["redis"] = REDIS_URL

# --- Logging --------------------------------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "t2i_project.logging.JsonFormatter"},
    },
    # Every line goes through the one handler, whose filter masks ComfyUI URL keys (/comfy/k/****).
    "filters": {"mask_comfy_keys": {"()": "generation.comfy_keys.MaskComfyKeys"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if env_bool("LOG_JSON", False) else "plain",
            "filters": ["mask_comfy_keys"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own loggers at LOG_LEVEL too (its defaults hold them at INFO), through the one handler.
        "django": {"level": LOG_LEVEL},
        "django.db.backends": {"level": "INFO"},
        "axes.apps": {"level": "WARNING"},  # not its "AXES: BEGIN version …" line on every manage.py call
    },
}

# --- Operations: background jobs, webhooks, retention, metrics, log context (issue 5) -------------------
# Run the jobs with `python manage.py qcluster` (ORM broker by default, Redis when T2I_REDIS_URL is set; the
# schedules are created by migrations generation/0005 and workers_app/0002 through
# generation.jobs.ensure_schedules()).
T2I.update(
    {
        # Seconds between the offline/expired-lease sweeps inside the once-a-minute maintenance job.
        "MAINTENANCE_EVERY": env_float("T2I_MAINTENANCE_EVERY", 5.0, minimum=0.5, maximum=60),
        # Delete finished tasks with their images and thumbnails after this many days; 0 keeps them forever.
        "RETENTION_DAYS": env_int("T2I_RETENTION_DAYS", 0, minimum=0),
        # Uploads of ComfyUI's `type=temp` (POST /comfy/upload/image) are deleted by the retention job once
        # this old, unless a queued or running task needs them (ComfyUI empties its temp folder on restart);
        # 0 keeps them.
        "TEMP_UPLOAD_HOURS": env_float("T2I_TEMP_UPLOAD_HOURS", 24.0, minimum=0),
        # Stored files that no image row names (a completion killed between writing them and its commit) are
        # removed by the hourly orphaned-files job once this old.
        "ORPHAN_GRACE_SECONDS": env_int("T2I_ORPHAN_GRACE_SECONDS", 3600, minimum=60),
        # Callback POSTs carry X-T2I-Signature: sha256=HMAC-SHA256(secret, raw body). Without a secret no
        # callback is sent: the delivery is recorded as given up.
        "WEBHOOK_SECRET": env_str("T2I_WEBHOOK_SECRET", ""),
        "WEBHOOK_MAX_TRIES": env_int("T2I_WEBHOOK_MAX_TRIES", 5, minimum=1, maximum=20),
        "WEBHOOK_BACKOFF": env_float("T2I_WEBHOOK_BACKOFF", 60.0, minimum=1),  # doubles after each failure
        # Read timeout of one try (connecting has 3 s at most): short, so a slow receiver holds little.
        "WEBHOOK_TIMEOUT": env_float("T2I_WEBHOOK_TIMEOUT", 5.0, minimum=0.5, maximum=60),
        # Tries to one receiver at once, across job processes; more wait (generation.webhooks).
        "WEBHOOK_PER_RECEIVER": env_int("T2I_WEBHOOK_PER_RECEIVER", 1, minimum=1, maximum=16),
        # Threads of the webhooks job, each sending one receiver's due deliveries.
        "WEBHOOK_SENDERS": env_int("T2I_WEBHOOK_SENDERS", 8, minimum=1, maximum=64),
        # Callbacks to loopback, private, link-local and multicast addresses are refused, but in these
        # networks (CIDRs, comma-separated), e.g. 192.168.1.0/24 for receivers on the LAN.
        "WEBHOOK_ALLOW_NETWORKS": env_networks("T2I_WEBHOOK_ALLOW_NETWORKS"),
        # Absolute base for the image URLs in callback bodies, e.g. http://farm.lan:8000 (else relative).
        "PUBLIC_URL": env_str("T2I_PUBLIC_URL", "").rstrip("/"),
        # When set, /metrics asks for "Authorization: Bearer <token>".
        "METRICS_TOKEN": env_str("T2I_METRICS_TOKEN", ""),
    }
)
# Plain log lines end with "task=… worker=…" whenever the call passed them in `extra` (JSON has them as
# fields).
LOGGING["formatters"]["plain"] = {
    "()": "t2i_project.logging.PlainFormatter",
    "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
}

# --- Security (SECURITY.md) -----------------------------------------------------------------------------
# Headers on every response: X-Content-Type-Options (SECURE_CONTENT_TYPE_NOSNIFF above), X-Frame-Options DENY
# (above), Referrer-Policy, Cross-Origin-Opener-Policy.
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Pages take the CSRF token from the form (static/js/legacy.js too), never from the cookie, so scripts need
# not read it.
CSRF_COOKIE_HTTPONLY = True

# Login rate limiting (django-axes): T2I_LOGIN_FAILURE_LIMIT failed sign-ins for one username from one address
# lock that pair out until T2I_LOGIN_LOCKOUT_MINUTES have passed since the last failure (429). It covers
# every password check: the site's sign-in page and the admin's. The address is the submit limit's
# (generation.client_address: REMOTE_ADDR, or what T2I_TRUSTED_PROXIES allows from X-Forwarded-For).
INSTALLED_APPS.append("axes")
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # refuses locked-out pairs before any password check
    "django.contrib.auth.backends.ModelBackend",
]
MIDDLEWARE.append("axes.middleware.AxesMiddleware")
AXES_ENABLED = env_bool("T2I_LOGIN_LOCKOUT", True)
AXES_FAILURE_LIMIT = env_int("T2I_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("T2I_LOGIN_LOCKOUT_MINUTES", 15.0, minimum=0.1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "generation.client_address.client_address"
# And T2I_LOGIN_ADDRESS_FAILURE_LIMIT failures from one address, whatever the usernames, lock the address
# (generation.login_lockout), so one machine cannot try a few passwords on every account.
AXES_HANDLER = "generation.login_lockout.LockoutHandler"
LOGIN_ADDRESS_FAILURE_LIMIT = env_int("T2I_LOGIN_ADDRESS_FAILURE_LIMIT", 20, minimum=1)
