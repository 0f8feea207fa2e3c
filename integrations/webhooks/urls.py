from django.urls import path

import sdsaas.api  # noqa: F401  (registers the public_id path converter)
from integrations.webhooks import apis

urlpatterns = [
    path("endpoints", apis.EndpointListCreateApi.as_view(), name="webhook-endpoints"),
    path(
        "endpoints/<public_id:endpoint_id>",
        apis.EndpointDetailApi.as_view(),
        name="webhook-endpoint-detail",
    ),
    path(
        "endpoints/<public_id:endpoint_id>/rotate-secret",
        apis.EndpointRotateSecretApi.as_view(),
        name="webhook-endpoint-rotate-secret",
    ),
    path(
        "endpoints/<public_id:endpoint_id>/test",
        apis.EndpointTestApi.as_view(),
        name="webhook-endpoint-test",
    ),
    path(
        "endpoints/<public_id:endpoint_id>/deliveries",
        apis.EndpointDeliveriesApi.as_view(),
        name="webhook-endpoint-deliveries",
    ),
    path(
        "endpoints/<public_id:endpoint_id>/redeliver-failed",
        apis.EndpointRedeliverFailedApi.as_view(),
        name="webhook-endpoint-redeliver-failed",
    ),
    path(
        "deliveries/<public_id:message_id>/redeliver",
        apis.MessageRedeliverApi.as_view(),
        name="webhook-delivery-redeliver",
    ),
    path("job-secret", apis.JobSecretApi.as_view(), name="webhook-job-secret"),
]
