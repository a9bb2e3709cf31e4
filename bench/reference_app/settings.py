"""Settings of the minimal reference app (bench.reference): Django's defaults, DRF's defaults unauthenticated.

Only what it takes to reach the scheduler's database: DATABASE_URL through dj_database_url with persistent
connections, and the `generation` and `workers_app` apps so that their ORM models exist. Nothing else of
t2i_project.settings: no sessions or admin apps, no whitenoise, no axes, no logging configuration.
"""

import os

import dj_database_url

DEBUG = False
SECRET_KEY = os.environ.get("SECRET_KEY", "bench-reference-secret-key-not-for-production-use-0123456789")
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "workers_app",
    "generation",
]

# What `django-admin startproject` writes.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "bench.reference_app.urls"
WSGI_APPLICATION = "t2i_project.wsgi.application"

DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=600)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"  # as the scheduler's migrations created the tables

USE_TZ = True
TIME_ZONE = "UTC"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}
