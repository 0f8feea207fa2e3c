"""The img2img image given as an https URL: fetched by the control worker into S3 under the
job before the job is published to its model's queue."""

from __future__ import annotations

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Q

from integrations.safe_http import FetchError, fetch
from jobs.models import Job
from jobs.services.dispatch import jobs_publish
from jobs.services.lifecycle import job_fail
from jobs.services.uploads import decode_image
from sdsaas.contract import FailureCode, input_image_key, job_output_prefix
from sdsaas.errors import InvalidInput


def job_fetch_input_image(*, job_pk: int, last_try: bool) -> None:
    """Fetch an admitted img2img job's https image into S3 under the job, then publish the job.

    Safe to run twice: once the image is stored, a second run finds it and does nothing, and a
    late failure cannot touch a job that is already on its way to a GPU. Raises when a retry may
    help and this is not the last try; otherwise a refused or unreadable image fails the job.
    """
    job = Job.objects.select_related("tenant", "model").filter(pk=job_pk).first()
    if job is None or job.status != Job.Status.STARTING or job.init_image_key:
        return  # canceled or finished meanwhile, or another run stored the image
    try:
        fetched = fetch(
            job.init_image_url,
            max_bytes=settings.UPLOAD_MAX_BYTES,
            allow_hosts=settings.IMAGE_FETCH_ALLOW_HOSTS,
            ca_file=settings.IMAGE_FETCH_CA_FILE,
            timeout=settings.IMAGE_FETCH_TIMEOUT_S,
        )
        _image, ext = decode_image(fetched.data)
        prefix = job_output_prefix(job.tenant_id, job.public_id)
        key = default_storage.save(input_image_key(prefix, ext), ContentFile(fetched.data))
    except FetchError as exc:
        if exc.retryable and not last_try:
            raise
        _fail_before_dispatch(job, FailureCode.IMAGE_FETCH_FAILED, f"image: {exc.message}")
        return
    except InvalidInput as exc:
        _fail_before_dispatch(
            job, FailureCode.INVALID_INPUT, exc.message.replace("file:", "image:", 1)
        )
        return
    except Exception:  # storage trouble, say: retried, and the job must not wait for ever
        if not last_try:
            raise
        _fail_before_dispatch(
            job, FailureCode.INTERNAL_ERROR, "image: could not be stored; try again"
        )
        return
    # The image and "not yet published" in one conditional write: a crash before the publish
    # below leaves the job to the sweeper, and a concurrent run of this task stops here.
    stored = Job.objects.filter(pk=job.pk, status=Job.Status.STARTING, init_image_key="").update(
        init_image_key=key, published_at=None
    )
    if stored:
        jobs_publish(job_ids=[job.pk])


@transaction.atomic
def _fail_before_dispatch(job: Job, code: FailureCode, message: str) -> None:
    """Fail a job whose input could not be fetched, unless another run already dispatched it."""
    job_fail(
        job, code=code, message=message, fence=Q(status=Job.Status.STARTING, init_image_key="")
    )
