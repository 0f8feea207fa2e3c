"""The one settings file: every value comes from the environment, bad values fail at start-up.

See README.md, "Configuration", for the table of variables.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from urllib.parse import quote, urlsplit

import dj_database_url
from botocore.config import Config as BotoConfig
from django.core.exceptions import ImproperlyConfigured

from sdsaas.contract import (
    TASK_DISCORD_DISPATCH,
    TASK_DISCORD_PRUNE,
    TASK_PRUNE_RECORDS,
    TASK_RECONCILE_LOST,
    TASK_SCALING_PUBLISH,
    TASK_SWEEP_DEAD_LETTERS,
    TASK_SWEEP_UNPUBLISHED,
    TASK_WEBHOOKS_DISPATCH,
    TASK_WEBHOOKS_PRUNE,
)

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise ImproperlyConfigured(f"{name} must be set")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    return value


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# SQS keeps a message invisible for at most 12 hours after it was received, extensions included.
SQS_MAX_INVISIBLE_S = 12 * 3600


def check_visibility_timing(
    *, visibility_s: int, heartbeat_s: int, outage_tolerance_s: int, job_time_limit_s: int
) -> None:
    """Refuse timings under which a job's message could reappear while its worker still runs it.

    The one rule for the settings and for the Terraform defaults (tests/deploy). A heartbeat that
    fails (SQS away) is tried again at the next beat, so through an outage the message stays
    invisible for at least visibility - heartbeat after it began, and the first beat after it may
    come a heartbeat after it ended: an outage the worker waits out (the tolerance) must end
    within visibility - 2 x heartbeat. A job past its time limit is let go on purpose.
    """
    if 3 * heartbeat_s > visibility_s:
        raise ImproperlyConfigured(
            f"SDSAAS_GPU_HEARTBEAT_S ({heartbeat_s}) must be at most a third of "
            f"SDSAAS_SQS_VISIBILITY_TIMEOUT ({visibility_s}), so that a missed heartbeat does not "
            "let a running job's message be delivered again"
        )
    if outage_tolerance_s + 2 * heartbeat_s > visibility_s:
        raise ImproperlyConfigured(
            f"SDSAAS_GPU_OUTAGE_TOLERANCE_S ({outage_tolerance_s}) must be at most "
            f"SDSAAS_SQS_VISIBILITY_TIMEOUT ({visibility_s}) - 2 x SDSAAS_GPU_HEARTBEAT_S "
            f"({heartbeat_s}): a job waiting out a longer outage would be delivered to another "
            "worker meanwhile"
        )
    if job_time_limit_s + visibility_s > SQS_MAX_INVISIBLE_S:
        raise ImproperlyConfigured(
            f"SDSAAS_GPU_JOB_TIME_LIMIT_S ({job_time_limit_s}) + SDSAAS_SQS_VISIBILITY_TIMEOUT "
            f"({visibility_s}) must be at most {SQS_MAX_INVISIBLE_S}: SQS keeps a message "
            "invisible for at most 12 hours after its receive"
        )


DEBUG = env_bool("SDSAAS_DEBUG", False)
# A fixed development key is allowed only with DEBUG on; production must set its own.
SECRET_KEY = os.environ.get("SDSAAS_SECRET_KEY") or (
    "dev-only-insecure-key" if DEBUG else env_str("SDSAAS_SECRET_KEY")
)
ALLOWED_HOSTS = env_list("SDSAAS_ALLOWED_HOSTS", "localhost,127.0.0.1,testserver")
# The public base URL used in job objects (`urls.get`, `urls.cancel`).
PUBLIC_BASE_URL = env_str("SDSAAS_PUBLIC_BASE_URL", "http://127.0.0.1:8000").rstrip("/")

# --- HTTPS: production defaults for gunicorn behind a TLS-terminating load balancer (ALB) ----
# Off in debug (the local stack is plain http on loopback); each is overridable.
# The ALB terminates TLS and always sets X-Forwarded-Proto, overwriting what a client sent. Set
# the variable empty where clients can reach gunicorn directly, or they could claim https.
_proxy_ssl_header = os.environ.get(
    "SDSAAS_PROXY_SSL_HEADER", "" if DEBUG else "X-Forwarded-Proto"
).strip()
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_ssl_header.upper().replace("-", "_"), "https") if _proxy_ssl_header else None
)
SECURE_SSL_REDIRECT = env_bool("SDSAAS_SSL_REDIRECT", not DEBUG)
# The API host serves nothing but https. The preload directive has no effect until the apex
# domain is submitted to the browsers' preload list, which is the domain owner's decision.
SECURE_HSTS_SECONDS = env_int("SDSAAS_HSTS_SECONDS", 0 if DEBUG else 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SDSAAS_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SDSAAS_HSTS_PRELOAD", not DEBUG)
# Session and CSRF cookies (the admin) only over https.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SDSAAS_SECURE_COOKIES", not DEBUG)
# The admin's forms post from the public origin, which the proxy in front rewrites.
CSRF_TRUSTED_ORIGINS = env_list(
    "SDSAAS_CSRF_TRUSTED_ORIGINS",
    "" if DEBUG else urlsplit(PUBLIC_BASE_URL)._replace(path="").geturl(),
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "tenants",
    "jobs",
    "integrations.webhooks",
    "integrations.discord",
]

MIDDLEWARE = [
    # First: the load balancer's checks and Prometheus come with the task's address as host.
    "sdsaas.ops.OpsMiddleware",
    "sdsaas.logs.ContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # The admin's static files, from STATIC_ROOT (collected into the web image): no other server
    # is needed in front of the API for them.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "sdsaas.urls"
WSGI_APPLICATION = "sdsaas.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# api | control | gpu. GPU workers hold no database credentials: any query there fails loudly.
ROLE = os.environ.get("SDSAAS_ROLE", "api")
if ROLE not in {"api", "control", "gpu"}:
    raise ImproperlyConfigured(f"SDSAAS_ROLE must be api, control or gpu, got {ROLE!r}")
_default_db = f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}"
try:
    DATABASES = {
        "default": dj_database_url.parse(
            os.environ.get("DATABASE_URL") or _default_db, conn_max_age=60
        )
    }
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
if ROLE == "gpu":
    DATABASES = {"default": {"ENGINE": "django.db.backends.dummy"}}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite for concurrent use (the default of `make run`): WAL lets readers run beside the one
    # writer; IMMEDIATE takes the write lock when a transaction begins, so two transactions never
    # both read and then ask to write (that deadlock fails at once with "database is locked",
    # whatever the timeout); the timeout is how long a writer queues for the lock.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not memory, so that worker processes started by end-to-end tests share it.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "var" / f"test-{os.getpid()}.sqlite3")}
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
if DEBUG:
    # In development WhiteNoise serves the apps' own static files (its finders, on with DEBUG);
    # STATIC_ROOT is filled only by collectstatic, in the web image, so its absence is expected.
    warnings.filterwarnings("ignore", message="No directory at: ")

# --- AWS: SQS broker and S3 storage -------------------------------------------------------------
AWS_REGION = env_str("SDSAAS_AWS_REGION", "us-east-1")
# Set to the local SQS/S3-compatible server in development and tests; empty means real AWS.
SQS_ENDPOINT_URL = os.environ.get("SDSAAS_SQS_ENDPOINT_URL", "")
SQS_QUEUE_PREFIX = env_str("SDSAAS_SQS_QUEUE_PREFIX", "sdsaas")
# The base visibility timeout of the queues: a received message that nobody extends or deletes is
# delivered again after this long. GPU workers extend theirs by a heartbeat while the job runs, so
# a lost worker's job is back on the queue within about this long, whatever the job's length.
SQS_VISIBILITY_TIMEOUT = env_int("SDSAAS_SQS_VISIBILITY_TIMEOUT", 60, minimum=5)
# Deliveries of one job message before it goes to the dead-letter queue (and the job fails).
SQS_MAX_RECEIVES = env_int("SDSAAS_SQS_MAX_RECEIVES", 3, minimum=1)
# Who owns the queues and their attributes: the application (true: the local stack) or Terraform
# (false: AWS; the application then only looks queues up). See sdsaas/broker/sqs.py.
SQS_MANAGE_QUEUES = env_bool("SDSAAS_SQS_MANAGE_QUEUES", True)
S3_BUCKET = env_str("SDSAAS_S3_BUCKET", "sdsaas-local")
S3_ENDPOINT_URL = os.environ.get("SDSAAS_S3_ENDPOINT_URL", "")
# Presigned output URLs expire after this many seconds.
OUTPUT_URL_TTL = env_int("SDSAAS_OUTPUT_URL_TTL", 3600, minimum=60)

STORAGES = {
    "default": {
        # django-storages' S3Storage, small files in one PutObject (sdsaas/storage.py)
        "BACKEND": "sdsaas.storage.S3Storage",
        "OPTIONS": {
            "bucket_name": S3_BUCKET,
            "region_name": AWS_REGION,
            "endpoint_url": S3_ENDPOINT_URL or None,
            "querystring_expire": OUTPUT_URL_TTL,
            # Keys are unique per object; a redelivered job rewrites its own output keys.
            "file_overwrite": True,
            "default_acl": None,
            # Bounded calls: a GPU worker's cancel check must not hang a job on a dead endpoint.
            "client_config": BotoConfig(
                connect_timeout=5, read_timeout=30, retries={"mode": "standard", "max_attempts": 3}
            ),
        },
    },
    # collectstatic also writes a compressed copy of each file, which WhiteNoise serves to
    # clients that accept it.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- GPU workers -------------------------------------------------------------------------------
# Verified copies of s3:// models and LoRAs (never downloaded twice), and the in-memory LRU bound.
GPU_MODEL_CACHE_DIR = Path(env_str("SDSAAS_MODEL_CACHE_DIR", str(BASE_DIR / "var" / "model-cache")))
GPU_PIPELINE_CACHE_BYTES = env_int("SDSAAS_PIPELINE_CACHE_BYTES", 12 * 1024**3, minimum=1)
# Inference speed-ups (gpu_worker/acceleration.py): "auto" (SDPA and channels-last on CUDA, none
# on the CPU), "none", or a comma list of sdpa, fuse_qkv, channels_last, compile,
# compile_regional, cuda_graphs. `python -m bench.inference` on the GPU says which pay.
GPU_OPTIMIZATIONS = env_str("SDSAAS_GPU_OPTIMIZATIONS", "auto")
# torch.compile's artefacts on disk (the instance's storage), so that a restarted worker does not
# compile again.
GPU_COMPILE_CACHE_DIR = Path(
    env_str("SDSAAS_GPU_COMPILE_CACHE_DIR", str(BASE_DIR / "var" / "compile-cache"))
)
# Micro-batching: a GPU worker that starts a text-to-image job also runs, in the same denoising
# loop, up to this many - 1 jobs already waiting in its queue with the same model, size, steps,
# guidance, scheduler and LoRAs (gpu_worker/tasks.py). 1: every job alone. `python -m
# bench.batching` on the GPU measures what a batch pays (issue 14, item 4).
GPU_MAX_BATCH = env_int("SDSAAS_GPU_MAX_BATCH", 8, minimum=1)
# A batch's latency budget: it takes in only the images that, at the rate its key's last run on
# this worker denoised them, end within this many seconds (gpu_worker/batch_budget.py).
GPU_BATCH_BUDGET_S = env_int("SDSAAS_GPU_BATCH_BUDGET_S", 5, minimum=0)
# On SIGTERM (spot interruption, scale-in) the current job may finish within this many seconds;
# past it, the job is handed back to the queue for another worker (ECS stopTimeout must exceed it).
GPU_STOP_GRACE_S = env_int("SDSAAS_GPU_STOP_GRACE_S", 25, minimum=0)
# ECS task scale-in protection (gpu_worker/protection.py): set while the worker holds a job,
# cleared once it has been idle this many seconds. The ECS agent injects ECS_AGENT_URI into every
# task's containers; unset (anywhere but ECS), the worker protects nothing.
GPU_ECS_AGENT_URI = os.environ.get("ECS_AGENT_URI", "")
GPU_PROTECTION_IDLE_S = env_int("SDSAAS_GPU_PROTECTION_IDLE_S", 2, minimum=0)
# Spot interruption notices (gpu_worker/spot.py): the instance metadata is asked this often, in
# seconds; 0: never. By default on under ECS, off elsewhere.
GPU_SPOT_POLL_S = env_int("SDSAAS_GPU_SPOT_POLL_S", 5 if GPU_ECS_AGENT_URI else 0, minimum=0)
GPU_IMDS_URL = env_str("SDSAAS_GPU_IMDS_URL", "http://169.254.169.254")
# A Celery worker's /healthz, /readyz and /metrics (sdsaas/worker_ops.py) on this port; 0: none.
WORKER_OPS_PORT = env_int("SDSAAS_WORKER_OPS_PORT", 0, minimum=0)
# Seconds between the heartbeats that keep a running job's message invisible (each one sets it
# invisible for another SQS_VISIBILITY_TIMEOUT).
GPU_HEARTBEAT_S = env_int("SDSAAS_GPU_HEARTBEAT_S", max(1, SQS_VISIBILITY_TIMEOUT // 6), minimum=1)
# A running job waits this long for S3 or SQS to come back (uploads, events) before it gives up.
# By default, as long as the heartbeat can hold a message through (check_visibility_timing).
GPU_OUTAGE_TOLERANCE_S = env_int(
    "SDSAAS_GPU_OUTAGE_TOLERANCE_S",
    max(0, SQS_VISIBILITY_TIMEOUT - 2 * GPU_HEARTBEAT_S),
    minimum=0,
)
# The heartbeat stops extending a job's message after this many seconds: a hung job is then
# delivered again (and dead-lettered after SQS_MAX_RECEIVES) instead of holding its message forever.
GPU_JOB_TIME_LIMIT_S = env_int("SDSAAS_GPU_JOB_TIME_LIMIT_S", 1800, minimum=1)
check_visibility_timing(
    visibility_s=SQS_VISIBILITY_TIMEOUT,
    heartbeat_s=GPU_HEARTBEAT_S,
    outage_tolerance_s=GPU_OUTAGE_TOLERANCE_S,
    job_time_limit_s=GPU_JOB_TIME_LIMIT_S,
)

# --- Scaling (jobs/scaling.py: the policy; jobs/services/scaling.py: its publisher) ------------
# Each model's pool needs ceil(work / (SCALING_ACCEPTABLE_WAIT_S / measured seconds per job))
# workers, grows at once, sheds the workers above the need after SCALING_SCALE_IN_DELAY_S and
# keeps one until it had no work for SCALING_KEEP_ALIVE_S (defaults chosen with
# bench/scaling_sim.py: see bench/README.md). Published every SCALING_PERIOD_S to CloudWatch.
SCALING_PERIOD_S = env_int("SDSAAS_SCALING_PERIOD_S", 10, minimum=1)
SCALING_ACCEPTABLE_WAIT_S = env_int("SDSAAS_SCALING_ACCEPTABLE_WAIT_S", 40, minimum=1)
SCALING_KEEP_ALIVE_S = env_int("SDSAAS_SCALING_KEEP_ALIVE_S", 600, minimum=0)
SCALING_SCALE_IN_DELAY_S = env_int("SDSAAS_SCALING_SCALE_IN_DELAY_S", 60, minimum=0)
SCALING_MAX_WORKERS = env_int("SDSAAS_SCALING_MAX_WORKERS", 20, minimum=1)
# Before a model has finished jobs to measure.
SCALING_DEFAULT_SECONDS_PER_JOB = env_int("SDSAAS_SCALING_DEFAULT_SECONDS_PER_JOB", 5, minimum=1)
# CloudWatch (the local AWS-compatible server in development: the SQS endpoint's).
SCALING_METRIC_NAMESPACE = env_str("SDSAAS_SCALING_METRIC_NAMESPACE", "sdsaas/scaling")
CLOUDWATCH_ENDPOINT_URL = os.environ.get("SDSAAS_CLOUDWATCH_ENDPOINT_URL", SQS_ENDPOINT_URL)
# Scale from zero: a job published for a model whose pool is empty raises the desired count of its
# ECS service (this template, `{prefix}` and `{slug}` filled in) in this cluster at once; empty:
# no ECS (the metric alone, which the local stack's pools follow).
SCALING_ECS_CLUSTER = os.environ.get("SDSAAS_SCALING_ECS_CLUSTER", "")
SCALING_ECS_SERVICE = env_str("SDSAAS_SCALING_ECS_SERVICE", "{prefix}-gpu-{slug}")
ECS_ENDPOINT_URL = os.environ.get("SDSAAS_ECS_ENDPOINT_URL", SQS_ENDPOINT_URL)

# --- Celery over SQS ----------------------------------------------------------------------------


def sqs_broker_url(endpoint_url: str) -> str:
    """`sqs://` for AWS (credentials from the environment or role); host:port for a local server."""
    if not endpoint_url:
        return "sqs://"
    parts = urlsplit(endpoint_url)
    key = quote(os.environ.get("AWS_ACCESS_KEY_ID", "local"), safe="")
    secret = quote(os.environ.get("AWS_SECRET_ACCESS_KEY", "local"), safe="")
    return f"sqs://{key}:{secret}@{parts.hostname}:{parts.port or 80}"


CELERY_BROKER_URL = sqs_broker_url(SQS_ENDPOINT_URL)
# Seconds to reach SQS when publishing from a request: past it the job is left to the sweeper.
PUBLISH_CONNECT_TIMEOUT = env_int("SDSAAS_PUBLISH_TIMEOUT", 3, minimum=1)
# Admitted jobs are published by a background thread of the process that admitted them, off the
# request's path (jobs/services/dispatch.py); off, the caller publishes them after its commit.
PUBLISH_IN_BACKGROUND = env_bool("SDSAAS_PUBLISH_IN_BACKGROUND", True)
# kombu's SQS consumer stops polling for good after an endpoint outage; this one keeps polling.
# Seconds an empty receive waits for a message (SQS long polling, at most 20). A stopping worker
# waits out the poll it has open, to hand back what it returns; never 0: with no client-side
# pause (polling_interval below) short polls would spin.
SQS_WAIT_TIME_S = env_int("SDSAAS_SQS_WAIT_TIME_S", 10, minimum=1)
if SQS_WAIT_TIME_S > 20:
    raise ImproperlyConfigured(f"SDSAAS_SQS_WAIT_TIME_S must be <= 20 (SQS), got {SQS_WAIT_TIME_S}")
CELERY_BROKER_TRANSPORT = "sdsaas.broker.transport:Transport"
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "region": AWS_REGION,
    "is_secure": not SQS_ENDPOINT_URL.startswith("http://"),
    "visibility_timeout": SQS_VISIBILITY_TIMEOUT,
    "wait_time_seconds": SQS_WAIT_TIME_S,
    # No client-side pause on top of the long poll: kombu also pauses this long whenever the
    # prefetch is full, which held the control worker to 2 events a second (its prefetch).
    "polling_interval": 0,
    # Each receive asks for a message's trace context too (sdsaas/telemetry.py).
    "fetch_message_attributes": {"MessageAttributeNames": ["traceparent"]},
    # Fail fast: a submit must not hang on a broker that is down (the sweeper publishes later).
    "client-config": {
        "connect_timeout": PUBLISH_CONNECT_TIMEOUT,
        "read_timeout": 30,
        "retries": {"mode": "standard", "max_attempts": 2},
    },
}
CELERY_TASK_DEFAULT_QUEUE = f"{SQS_QUEUE_PREFIX}-control"
# Admitted jobs still unpublished after this many seconds are published again by the sweeper.
SWEEP_UNPUBLISHED_AFTER = env_int("SDSAAS_SWEEP_UNPUBLISHED_AFTER", 30, minimum=0)
# The reconciler: an admitted, published job with no sign of life (admission, publish, event) for
# this many seconds, whose queue holds no message at all (nor its dead-letter queue), lost its
# message: it is published again. More than SQS's approximate counts lag (about a minute).
RECONCILE_AFTER_S = env_int("SDSAAS_RECONCILE_AFTER_S", 120, minimum=1)
# Times one job is published again by the reconciler; lost once more, it fails `message_lost`.
RECONCILE_MAX_REPUBLISHES = env_int("SDSAAS_RECONCILE_MAX_REPUBLISHES", 3, minimum=0)
# How often the safety nets run: the sweeps of unpublished and dead-lettered jobs, the reconciler.
SWEEP_EVERY_S = env_int("SDSAAS_SWEEP_EVERY_S", 15, minimum=1)
CELERY_BEAT_SCHEDULE = {
    "sweep-unpublished-jobs": {"task": TASK_SWEEP_UNPUBLISHED, "schedule": float(SWEEP_EVERY_S)},
    "sweep-dead-letters": {"task": TASK_SWEEP_DEAD_LETTERS, "schedule": float(SWEEP_EVERY_S)},
    "reconcile-lost-jobs": {"task": TASK_RECONCILE_LOST, "schedule": float(SWEEP_EVERY_S)},
    "prune-records": {"task": TASK_PRUNE_RECORDS, "schedule": 3600.0},
    # A run that waited in the queue past a few periods is dropped: a newer one is due.
    "publish-scaling": {
        "task": TASK_SCALING_PUBLISH,
        "schedule": float(SCALING_PERIOD_S),
        "options": {"expires": 3 * SCALING_PERIOD_S},
    },
    "dispatch-webhooks": {"task": TASK_WEBHOOKS_DISPATCH, "schedule": 5.0},
    "prune-webhook-log": {"task": TASK_WEBHOOKS_PRUNE, "schedule": 3600.0},
    "dispatch-discord-replies": {"task": TASK_DISCORD_DISPATCH, "schedule": 2.0},
    "prune-discord-interactions": {"task": TASK_DISCORD_PRUNE, "schedule": 3600.0},
}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
if ROLE == "gpu":
    # One job per GPU: the solo pool runs one task, and its prefetch is concurrency x multiplier,
    # so a concurrency of 1 keeps every other message in SQS for idle workers (and out of the
    # hands of a worker that is about to be preempted).
    CELERY_WORKER_POOL = "solo"
    CELERY_WORKER_CONCURRENCY = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- Notifications ------------------------------------------------------------------------------
# Called, in order, with each job state change a client can see, inside the transaction that makes
# it (jobs/announcements.py). Webhooks and Discord subscribe here; code, not configuration.
JOB_STATE_SUBSCRIBERS: list[str] = [
    "integrations.webhooks.services.outbox.on_job_state_change",
    "integrations.discord.services.replies.on_job_state_change",
]
# Checks a job's own `webhook` URL at submit (InvalidInput naming `webhook` when it cannot be sent).
JOB_WEBHOOK_VALIDATOR = "integrations.webhooks.services.endpoints.job_webhook_validate"

# Webhooks (integrations/webhooks/). Signing secrets are stored encrypted with these Fernet keys,
# never with SECRET_KEY: the first encrypts, all decrypt (rotation: see webhooks/secrets.py).
# Make one with `python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key())"`.
WEBHOOK_SECRET_KEYS = env_list(
    "SDSAAS_WEBHOOK_SECRET_KEYS",
    "ZGV2LW9ubHktaW5zZWN1cmUtd2ViaG9vay1rZXktMDA=" if DEBUG else "",
)
if not WEBHOOK_SECRET_KEYS and ROLE != "gpu":  # GPU workers never sign
    raise ImproperlyConfigured("SDSAAS_WEBHOOK_SECRET_KEYS must be set")
# host:port pairs reachable over plain http, and exempt from the public-address check: local
# development and tests only; empty in production.
WEBHOOK_ALLOW_HOSTS = frozenset(h.lower() for h in env_list("SDSAAS_WEBHOOK_ALLOW_HOSTS", ""))
WEBHOOK_CA_FILE = os.environ.get("SDSAAS_WEBHOOK_CA_FILE") or None
WEBHOOK_CONNECT_TIMEOUT_S = 3.0
WEBHOOK_TIMEOUT_S = 15.0
# Messages in flight at once per endpoint (or per-job URL): a dead one holds no more than this.
WEBHOOK_TARGET_CONCURRENCY = env_int("SDSAAS_WEBHOOK_TARGET_CONCURRENCY", 2, minimum=1)
# After a secret rotation, the previous secret also signs for this long.
WEBHOOK_ROTATION_WINDOW_S = env_int("SDSAAS_WEBHOOK_ROTATION_WINDOW_S", 24 * 3600, minimum=0)
# An endpoint whose messages keep failing this long after it was first marked failing is disabled.
# Settled messages and their attempts are kept this many days in the delivery log.
WEBHOOK_LOG_DAYS = env_int("SDSAAS_WEBHOOK_LOG_DAYS", 30, minimum=1)
WEBHOOK_DISABLE_AFTER_S = env_int("SDSAAS_WEBHOOK_DISABLE_AFTER_S", 5 * 24 * 3600, minimum=3600)

# Discord (integrations/discord/). Bot tokens are stored encrypted with these Fernet keys, never
# with SECRET_KEY: the first encrypts, all decrypt (rotation: `manage.py discord_tokens_reencrypt`).
DISCORD_TOKEN_KEYS = env_list(
    "SDSAAS_DISCORD_TOKEN_KEYS",
    "ZGV2LW9ubHktaW5zZWN1cmUtZGlzY29yZC1rZXktMDA=" if DEBUG else "",
)
if not DISCORD_TOKEN_KEYS and ROLE != "gpu":  # GPU workers never call Discord
    raise ImproperlyConfigured("SDSAAS_DISCORD_TOKEN_KEYS must be set")
# Every Discord API call goes here; tests and the local stack point it at a stand-in.
DISCORD_API_BASE = env_str("SDSAAS_DISCORD_API_BASE", "https://discord.com/api/v10").rstrip("/")
DISCORD_CONNECT_TIMEOUT_S = 3.0
DISCORD_TIMEOUT_S = 10.0
# A rate limit that ends within this many seconds is waited out in the call; a longer one makes
# the call fail as retryable, with the wait, and its task tries again then.
DISCORD_MAX_WAIT_S = 5.0
# Interactions signed more than this many seconds away from our clock are refused (replays).
DISCORD_MAX_CLOCK_SKEW_S = 300
# A reply is edited at most this often while its job runs (the final edit is not held back).
DISCORD_EDIT_INTERVAL_S = env_int("SDSAAS_DISCORD_EDIT_INTERVAL_S", 2, minimum=1)
# An image larger than this is shown as an embed with its URL instead of an attachment.
DISCORD_ATTACHMENT_MAX_BYTES = env_int(
    "SDSAAS_DISCORD_ATTACHMENT_MAX_BYTES", 10 * 1024 * 1024, minimum=1024
)

# --- API ----------------------------------------------------------------------------------------
# The API's HTTP server (`gunicorn -c python:sdsaas.gunicorn_conf sdsaas.wsgi`).
API_BIND = env_str("SDSAAS_API_BIND", "127.0.0.1:8000")
API_WORKERS = env_int("SDSAAS_API_WORKERS", 2, minimum=1)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.authentication.HasScope"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON everywhere; the upload view alone takes multipart.
    "DEFAULT_PARSER_CLASSES": ["sdsaas.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "sdsaas.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "sdsaas API",
    "DESCRIPTION": "Multi-tenant Stable Diffusion: submit jobs, poll them, cancel them.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Served from the app itself: the docs page works with no access to a CDN.
    "REDOC_DIST": "SIDECAR",
}
# Uploads: the file cap, and a decoded-pixel cap against decompression bombs.
UPLOAD_MAX_BYTES = env_int("SDSAAS_UPLOAD_MAX_BYTES", 10 * 1024 * 1024, minimum=1024)
UPLOAD_MAX_PIXELS = env_int("SDSAAS_UPLOAD_MAX_PIXELS", 4096 * 4096, minimum=64 * 64)
DATA_UPLOAD_MAX_MEMORY_SIZE = UPLOAD_MAX_BYTES + 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = UPLOAD_MAX_BYTES + 1024 * 1024
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
# img2img by URL: the control worker fetches https URLs (SSRF-safe, integrations.safe_http) into S3.
# Hosts listed here skip the public-address check: for tests and trusted internal image hosts.
IMAGE_FETCH_ALLOW_HOSTS = frozenset(
    host.lower() for host in env_list("SDSAAS_IMAGE_FETCH_ALLOW_HOSTS", "")
)
# A CA bundle to trust instead of the public ones (tests use their own CA); empty: certifi's.
IMAGE_FETCH_CA_FILE = os.environ.get("SDSAAS_IMAGE_FETCH_CA_FILE") or None
IMAGE_FETCH_TIMEOUT_S = env_int("SDSAAS_IMAGE_FETCH_TIMEOUT_S", 15, minimum=1)

# `json`: one object per line with the job's and tenant's ids (sdsaas/logs.py); `plain`: a line
# for people. Celery's workers keep their own handler only for `plain`.
LOG_FORMAT = env_str("SDSAAS_LOG_FORMAT", "plain" if DEBUG else "json")
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured("SDSAAS_LOG_FORMAT must be plain or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "sdsaas.logs.JsonFormatter"},
    },
    "filters": {"context": {"()": "sdsaas.logs.ContextFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("SDSAAS_LOG_LEVEL", "INFO")},
    "loggers": {
        "botocore": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
        # Django's own console handler (debug only) goes: its lines reach the root's, once.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
    },
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = LOG_FORMAT == "plain"
# `/metrics` (sdsaas/ops.py) answers only `Authorization: Bearer <this>`; empty: debug only.
METRICS_TOKEN = os.environ.get("SDSAAS_METRICS_TOKEN", "")
# Traces (sdsaas/telemetry.py): `none`, `otlp` (to OTEL_EXPORTER_OTLP_ENDPOINT) or `file:<path>`.
OTEL_EXPORTER = env_str("SDSAAS_OTEL_EXPORTER", "none")
if OTEL_EXPORTER not in {"none", "otlp"} and not OTEL_EXPORTER.startswith("file:"):
    raise ImproperlyConfigured("SDSAAS_OTEL_EXPORTER must be none, otlp or file:<path>")
