# syntax=docker/dockerfile:1
# The GPU worker image: CUDA runtime, Python 3.11, the project's GPU profile of the lock, torch's
# CUDA build. No weights inside: a worker reads its model from S3 (or a path) into
# SDSAAS_MODEL_CACHE_DIR, which deploy/terraform/ mounts from the instance's own storage, so a
# new task on a warm instance does not download again. No database client and no web app.
#
#   docker build -f deploy/docker/gpu.Dockerfile -t sdsaas-gpu .
#   docker run --rm --gpus all -e SDSAAS_SQS_QUEUE_PREFIX=... sdsaas-gpu \
#     celery -A gpu_worker.worker worker -P solo -Q sdsaas-model-sd15
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.5
# torch's CUDA build of the version the lock pins (requirements/gpu.txt names the CPU build the
# development machines use; everything else is installed from the lock as it is).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

FROM ${UV_IMAGE} AS uv

# --- build: Python 3.11 and the virtualenv -------------------------------------------------------
FROM ${CUDA_IMAGE} AS build
ARG TORCH_VERSION
ARG TORCH_INDEX
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_NO_CACHE=1 UV_LINK_MODE=copy
RUN uv python install 3.11 && uv venv --python 3.11 /opt/venv
COPY requirements/gpu.txt /tmp/gpu.txt
# The lock without its torch entry (the CPU build and its hashes), installed by hash as it is.
RUN awk 'BEGIN{skip=0} /^torch==/{skip=1; next} skip && /^[[:space:]]/{next} {skip=0; print}' \
      /tmp/gpu.txt > /tmp/gpu-without-torch.txt \
 && uv pip install --python /opt/venv/bin/python --require-hashes --no-deps \
      -r /tmp/gpu-without-torch.txt
# Then torch's CUDA build of the same version: its own metadata pins the CUDA libraries
# (nvidia-*) and triton it needs, exactly.
RUN uv pip install --python /opt/venv/bin/python --index-url "${TORCH_INDEX}" \
      "torch==${TORCH_VERSION}"
# The worker's code only: it never imports the web app (an import contract).
COPY pyproject.toml /src/
COPY sdsaas /src/sdsaas
COPY gpu_worker /src/gpu_worker
RUN uv pip install --python /opt/venv/bin/python --no-deps --no-build-isolation /src

# --- run: the CUDA runtime, the interpreter and the virtualenv; a user of its own ---------------
FROM ${CUDA_IMAGE} AS run
RUN groupadd --system --gid 10001 sdsaas \
 && useradd --system --uid 10001 --gid sdsaas --no-create-home --shell /usr/sbin/nologin sdsaas \
 && mkdir -p /var/cache/sdsaas/models /var/cache/sdsaas/compile \
 && chown -R sdsaas:sdsaas /var/cache/sdsaas
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=root:root /src /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DJANGO_SETTINGS_MODULE=sdsaas.settings \
    SDSAAS_ROLE=gpu \
    SDSAAS_MODEL_CACHE_DIR=/var/cache/sdsaas/models \
    SDSAAS_GPU_COMPILE_CACHE_DIR=/var/cache/sdsaas/compile
WORKDIR /app
USER sdsaas
# The model cache (instance storage, mounted by the task definition) and the compile cache (the
# container's own: it does not outlive the task).
VOLUME ["/var/cache/sdsaas"]
# The health check is the task definition's (deploy/terraform/gpu.tf): /healthz on
# SDSAAS_WORKER_OPS_PORT, which the deployment chooses.
HEALTHCHECK NONE
CMD ["celery", "-A", "gpu_worker.worker", "worker", "-P", "solo", "--loglevel", "INFO"]
