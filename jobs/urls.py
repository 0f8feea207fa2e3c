from django.urls import path

import sdsaas.api  # noqa: F401  (registers the public_id path converter)
from jobs import apis

urlpatterns = [
    path("jobs", apis.JobListCreateApi.as_view(), name="jobs"),
    path("jobs/<public_id:job_id>", apis.JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<public_id:job_id>/cancel", apis.JobCancelApi.as_view(), name="job-cancel"),
    path("models", apis.ModelListApi.as_view(), name="models"),
    path("loras", apis.LoraListApi.as_view(), name="loras"),
    path("uploads", apis.UploadCreateApi.as_view(), name="uploads"),
    path("usage", apis.UsageApi.as_view(), name="usage"),
]
