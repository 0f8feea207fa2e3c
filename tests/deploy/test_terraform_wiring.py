"""The Terraform stack is wired as the application expects (deploy/terraform/*.tf, parsed)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.deploy import tfconfig

STACK = tfconfig.load()


@pytest.mark.parametrize("check", tfconfig.ALL_CHECKS, ids=lambda c: c.__name__)
def test_the_stack_passes(check: Callable[[tfconfig.Stack], list[str]]) -> None:
    assert check(STACK) == []


def broken(edit: Callable[[tfconfig.Stack], None]) -> tfconfig.Stack:
    stack = STACK.copy()
    edit(stack)
    return stack


def test_a_missing_dead_letter_queue_is_reported() -> None:
    # given the stack without the model queues' DLQ
    stack = broken(lambda s: s.resources["aws_sqs_queue"].pop("model_dlq"))
    # then the wiring check names it
    assert "aws_sqs_queue.model_dlq: not one <queue>-dlq per model" in (
        tfconfig.check_model_wiring(stack)
    )


def test_a_redrive_count_other_than_max_receives_is_reported() -> None:
    def edit(s: tfconfig.Stack) -> None:
        queue = s.resources["aws_sqs_queue"]["model"]
        queue["redrive_policy"] = queue["redrive_policy"].replace("${var.max_receives}", "5")

    assert "aws_sqs_queue.model: maxReceiveCount is not var.max_receives" in (
        tfconfig.check_model_wiring(broken(edit))
    )


def test_a_gpu_service_the_control_plane_cannot_find_is_reported() -> None:
    # the control plane wakes "{prefix}-gpu-{slug}" (SDSAAS_SCALING_ECS_SERVICE)
    def edit(s: tfconfig.Stack) -> None:
        s.resources["aws_ecs_service"]["gpu"]["name"] = "${var.prefix}-${each.key}"

    assert "aws_ecs_service.gpu: not named ${var.prefix}-gpu-${each.key}" in (
        tfconfig.check_model_wiring(broken(edit))
    )


def test_a_scaling_policy_on_another_metric_is_reported() -> None:
    def edit(s: tfconfig.Stack) -> None:
        policy = s.resources["aws_appautoscaling_policy"]["gpu"]
        text = repr(policy).replace("DesiredWorkers", "CPUUtilization")
        policy.clear()
        policy.update(eval(text))

    assert "aws_appautoscaling_policy.gpu: does not track DesiredWorkers" in (
        tfconfig.check_model_wiring(broken(edit))
    )


def test_a_queue_with_its_own_visibility_is_reported() -> None:
    def edit(s: tfconfig.Stack) -> None:
        s.resources["aws_sqs_queue"]["service"]["visibility_timeout_seconds"] = 300

    assert tfconfig.check_visibility(broken(edit)) == [
        "aws_sqs_queue.service: visibility is not var.visibility_timeout_seconds"
    ]


def test_database_credentials_on_a_gpu_worker_are_reported() -> None:
    def edit(s: tfconfig.Stack) -> None:
        s.locals["gpu_secrets"]["DATABASE_URL"] = "${aws_secretsmanager_secret.database_url.arn}"

    assert "local.gpu_secrets: holds the database secret" in (
        tfconfig.check_gpu_has_no_database(broken(edit))
    )


def test_a_bucket_open_to_public_policies_is_reported() -> None:
    def edit(s: tfconfig.Stack) -> None:
        s.resources["aws_s3_bucket_public_access_block"]["data"]["block_public_policy"] = False
        s.resources["aws_s3_bucket_lifecycle_configuration"].pop("data")

    assert tfconfig.check_bucket(broken(edit)) == [
        "aws_s3_bucket.data: no enabled lifecycle rule with an expiration",
        "aws_s3_bucket_public_access_block.data: block_public_policy is not true",
    ]


def test_a_plain_http_listener_on_443_is_reported() -> None:
    def edit(s: tfconfig.Stack) -> None:
        s.resources["aws_lb_listener"]["https"]["protocol"] = "HTTP"

    assert tfconfig.check_tls_listener(broken(edit)) == ["aws_lb_listener on 443: not HTTPS"]


def test_a_stop_timeout_shorter_than_the_grace_is_reported() -> None:
    def edit(s: tfconfig.Stack) -> None:
        s.locals["gpu_stop_timeout"] = "${min(var.gpu_stop_grace_seconds + 5,120)}"

    assert tfconfig.check_stop_timeout(broken(edit))


def test_what_a_first_deploy_lacked_is_reported() -> None:
    # given the stack as a review found it: beat's schedule in root's /app, the API unable to
    # wake a pool, the webhooks sender presigning what it cannot read, the GPU role without
    # SendMessage on its own queue and with a ListBucket on a prefix, a root-owned model cache,
    # and the backstop divided by running tasks
    def edit(s: tfconfig.Stack) -> None:
        s.locals["control_plane_services"] = str(s.locals["control_plane_services"]).replace(
            "'beat', '-s', '/tmp/celerybeat-schedule'", "'beat'"
        )
        s.locals["control_plane_policies"]["api"] = s.locals["control_plane_policies"]["api"][:4]
        s.locals["control_plane_policies"]["webhooks"] = s.locals["control_plane_policies"][
            "webhooks"
        ][:3]
        policy = s.resources["aws_iam_role_policy"]["gpu_task"]
        policy["policy"] = (
            str(policy["policy"])
            .replace(
                "\"${concat(local.sqs_consume,['sqs:SendMessage'])}\"", "'${local.sqs_consume}'"
            )
            .replace(
                "'Action': ['s3:ListBucket'], 'Resource'",
                "'Action': ['s3:ListBucket'], 'Condition': {'s3:prefix': 'x'}, 'Resource'",
            )
        )
        template = s.resources["aws_launch_template"]["gpu"]
        template["user_data"] = str(template["user_data"]).replace("chown", "echo")
        backstop = str(s.resources["aws_appautoscaling_policy"]["gpu"])
        s.resources["aws_appautoscaling_policy"]["gpu"] = {
            "as_written": backstop.replace("DesiredTaskCount", "RunningTaskCount")
        }

    # then each is named
    assert tfconfig.check_service_rights(broken(edit)) == [
        "local.control_plane_services: beat's schedule file is not under /tmp",
        "control_plane_policies.api: lacks ${local.gpu_services_resize} (pools_wake)",
        "control_plane_policies.api: lacks ${local.scaling_metric_put} (pools_wake)",
        "control_plane_policies.webhooks: cannot read the objects it presigns",
        "aws_iam_role_policy.gpu_task: cannot send to its own queue (preemption)",
        "aws_iam_role_policy.gpu_task: no unconditional ListBucket (404s)",
        "aws_launch_template.gpu: the model cache is not the GPU user's",
        "aws_appautoscaling_policy.gpu: not DesiredWorkers / DesiredTaskCount",
    ]


def test_operators_endpoints_left_out_are_reported() -> None:
    # given the stack without the metrics token, the ops port of the workers, and their check
    def edit(s: tfconfig.Stack) -> None:
        secrets = dict(s.locals["control_plane_secrets"])
        secrets.pop("SDSAAS_METRICS_TOKEN")
        s.locals["control_plane_secrets"] = secrets
        s.locals["control_plane_services"] = str(s.locals["control_plane_services"]).replace(
            "local.celery_worker_env", "local.nothing", 1
        )
        task = str(s.resources["aws_ecs_task_definition"]["control_plane"])
        s.resources["aws_ecs_task_definition"]["control_plane"] = {
            "as_written": task.replace("healthCheck", "somethingElse")
        }

    # then each is named
    assert tfconfig.check_operators_endpoints(broken(edit)) == [
        "local.control_plane_secrets: no SDSAAS_METRICS_TOKEN",
        "local.control_plane_services: a Celery worker without the ops port",
        "aws_ecs_task_definition.control_plane: no health check for the workers",
    ]
