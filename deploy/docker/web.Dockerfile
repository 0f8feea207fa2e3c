# syntax=docker/dockerfile:1
# The API / control-plane image: gunicorn (the API), the control worker, the webhooks and Discord
# senders and the scheduler all run from it, with different commands (deploy/terraform/). No
# torch, no diffusers: requirements/web.txt does not name them (an import contract keeps the
# code from needing them).
#
#   docker build -f deploy/docker/web.Dockerfile -t sdsaas-web .
#   docker run --rm -p 8000:8000 -e SDSAAS_SECRET_KEY=... sdsaas-web
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the project's lock into a virtualenv (hashes checked, nothing resolved) -----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
COPY requirements/web.txt /tmp/web.txt
# (setuptools among them: the lock's builds the project below without isolation, not the base
# image's, which may be too old to build a wheel)
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r /tmp/web.txt
COPY pyproject.toml /src/
COPY sdsaas /src/sdsaas
COPY tenants /src/tenants
COPY jobs /src/jobs
COPY integrations /src/integrations
COPY manage.py /src/
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation /src \
 && cd /src && SDSAAS_DEBUG=1 /opt/venv/bin/python manage.py collectstatic --no-input

# --- run: the virtualenv, the sources and the static files; a user without a shell's rights ---
FROM ${PYTHON_IMAGE} AS run
RUN groupadd --system --gid 10001 sdsaas \
 && useradd --system --uid 10001 --gid sdsaas --no-create-home --shell /usr/sbin/nologin sdsaas
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=root:root /src /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DJANGO_SETTINGS_MODULE=sdsaas.settings \
    SDSAAS_API_BIND=0.0.0.0:8000
WORKDIR /app
USER sdsaas
EXPOSE 8000
# The load balancer's check is the same path (no database: a database outage must not take every
# task out of the target group at once).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["gunicorn", "-c", "python:sdsaas.gunicorn_conf", "sdsaas.wsgi"]
