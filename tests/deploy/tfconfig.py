"""The Terraform stack of deploy/terraform/ read with checkov's HCL parser, and its wiring checks.

Each check returns the problems it finds (empty: none), so that a test can break a parsed copy and
see the check report it.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2

TF_DIR = Path(__file__).resolve().parents[2] / "deploy" / "terraform"


def _flat(value: Any) -> Any:
    """The parser wraps every attribute in a list of one; unwrap those, recursively."""
    if isinstance(value, list):
        items = [_flat(item) for item in value]
        return items[0] if len(items) == 1 and not isinstance(value[0], list) else items
    if isinstance(value, dict):
        return {k: _flat(v) for k, v in value.items() if not k.startswith("__")}
    return value


@dataclass
class Stack:
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    data: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        return self.resources.get(kind, {}).get(name, {})

    def copy(self) -> Stack:
        return copy.deepcopy(self)


def load(tf_dir: Path = TF_DIR) -> Stack:
    stack = Stack()
    for path in sorted(tf_dir.glob("*.tf")):
        with path.open() as handle:
            parsed = hcl2.load(handle)
        for block in parsed.get("resource", []):
            for kind, named in block.items():
                for name, body in named.items():
                    stack.resources.setdefault(kind, {})[name] = _flat(body)
        for block in parsed.get("data", []):
            for kind, named in block.items():
                for name, body in named.items():
                    stack.data.setdefault(kind, {})[name] = _flat(body)
        for block in parsed.get("variable", []):
            for name, body in block.items():
                stack.variables[name] = _flat(body)
        for block in parsed.get("locals", []):
            stack.locals.update(_flat(block))
    return stack


def _blocks(value: Any) -> list[Any]:
    """A nested block that occurs once parses as a dict, several times as a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


# --- Checks ---------------------------------------------------------------------------------------

FOR_EACH_MODEL = "${var.model_slugs}"


def check_model_wiring(stack: Stack) -> list[str]:
    """Every model slug: a queue, its DLQ with maxReceiveCount = max_receives, a GPU service named
    <prefix>-gpu-<slug> and a scaling target and policy on DesiredWorkers."""
    problems = []
    queue = stack.resource("aws_sqs_queue", "model")
    dlq = stack.resource("aws_sqs_queue", "model_dlq")
    if queue.get("for_each") != FOR_EACH_MODEL or queue.get("name") != (
        "${var.prefix}-model-${each.key}"
    ):
        problems.append("aws_sqs_queue.model: not one <prefix>-model-<slug> queue per model")
    if dlq.get("for_each") != FOR_EACH_MODEL or dlq.get("name") != (
        "${var.prefix}-model-${each.key}-dlq"
    ):
        problems.append("aws_sqs_queue.model_dlq: not one <queue>-dlq per model")
    redrive = str(queue.get("redrive_policy", ""))
    if "aws_sqs_queue.model_dlq[each.key].arn" not in redrive:
        problems.append("aws_sqs_queue.model: redrive policy does not name the model's DLQ")
    if not re.search(r"'maxReceiveCount': '\$\{var\.max_receives\}'", redrive):
        problems.append("aws_sqs_queue.model: maxReceiveCount is not var.max_receives")

    service = stack.resource("aws_ecs_service", "gpu")
    if service.get("for_each") != FOR_EACH_MODEL:
        problems.append("aws_ecs_service.gpu: not one service per model")
    if service.get("name") != "${var.prefix}-gpu-${each.key}":
        problems.append("aws_ecs_service.gpu: not named ${var.prefix}-gpu-${each.key}")
    ignored = str(_blocks(service.get("lifecycle")))
    if "desired_count" not in ignored:
        problems.append("aws_ecs_service.gpu: desired_count is not ignored (the policy sets it)")

    target = stack.resource("aws_appautoscaling_target", "gpu")
    if target.get("for_each") != FOR_EACH_MODEL or "aws_ecs_service.gpu[each.key]" not in str(
        target.get("resource_id")
    ):
        problems.append("aws_appautoscaling_target.gpu: not one per GPU service")
    if target.get("min_capacity") != 0 or target.get("max_capacity") != "${var.gpu_max_workers}":
        problems.append("aws_appautoscaling_target.gpu: capacity is not 0..var.gpu_max_workers")

    policy = stack.resource("aws_appautoscaling_policy", "gpu")
    if policy.get(
        "for_each"
    ) != FOR_EACH_MODEL or "aws_appautoscaling_target.gpu[each.key]" not in (
        str(policy.get("resource_id"))
    ):
        problems.append("aws_appautoscaling_policy.gpu: not one per scaling target")
    tracking = _blocks(policy.get("target_tracking_scaling_policy_configuration"))
    metric_names, dimensions, namespaces, targets = set(), set(), set(), []
    for config in tracking:
        targets.append(config.get("target_value"))
        for spec in _blocks(config.get("customized_metric_specification")):
            for metric in _blocks(spec.get("metrics")):
                for stat in _blocks(metric.get("metric_stat")):
                    for m in _blocks(stat.get("metric")):
                        metric_names.add(m.get("metric_name"))
                        namespaces.add(m.get("namespace"))
                        for dim in _blocks(m.get("dimensions")):
                            dimensions.add((dim.get("name"), dim.get("value")))
    if "DesiredWorkers" not in metric_names:
        problems.append("aws_appautoscaling_policy.gpu: does not track DesiredWorkers")
    if "${var.scaling_metric_namespace}" not in namespaces:
        problems.append("aws_appautoscaling_policy.gpu: not in var.scaling_metric_namespace")
    if not {("Deployment", "${var.prefix}"), ("Model", "${each.key}")} <= dimensions:
        problems.append("aws_appautoscaling_policy.gpu: DesiredWorkers not by Deployment and Model")
    if targets != [1.0] and targets != [1]:
        problems.append("aws_appautoscaling_policy.gpu: target value is not 1")
    return problems


def check_service_queues(stack: Stack) -> list[str]:
    """control, webhooks and discord: each a queue with its DLQ and the same redrive."""
    problems = []
    names = stack.locals.get("service_queues", "")
    for suffix in ("control", "webhooks", "discord"):
        if f"'{suffix}'" not in str(names):
            problems.append(f"local.service_queues: no {suffix} queue")
    queue = stack.resource("aws_sqs_queue", "service")
    dlq = stack.resource("aws_sqs_queue", "service_dlq")
    if queue.get("name") != "${var.prefix}-${each.key}" or dlq.get("name") != (
        "${var.prefix}-${each.key}-dlq"
    ):
        problems.append("aws_sqs_queue.service/service_dlq: names are not <prefix>-<name>[-dlq]")
    redrive = str(queue.get("redrive_policy", ""))
    if "aws_sqs_queue.service_dlq[each.key].arn" not in redrive or (
        "'maxReceiveCount': '${var.max_receives}'" not in redrive
    ):
        problems.append("aws_sqs_queue.service: no redrive to its DLQ after var.max_receives")
    return problems


def check_visibility(stack: Stack) -> list[str]:
    """Every queue that is not a DLQ has the base visibility timeout the services are given."""
    problems = []
    for name, queue in stack.resources.get("aws_sqs_queue", {}).items():
        if "dlq" in name:
            continue
        if queue.get("visibility_timeout_seconds") != "${var.visibility_timeout_seconds}":
            problems.append(
                f"aws_sqs_queue.{name}: visibility is not var.visibility_timeout_seconds"
            )
    env = stack.locals.get("gpu_worker_queue_env", {})
    if env.get("SDSAAS_SQS_VISIBILITY_TIMEOUT") != "${tostring(var.visibility_timeout_seconds)}":
        problems.append("local.gpu_worker_queue_env: workers not given the queues' visibility")
    return problems


def check_gpu_has_no_database(stack: Stack) -> list[str]:
    """GPU tasks: no DATABASE_URL in their environment or secrets, no access to the DB secret."""
    problems = []
    gpu_secrets = stack.locals.get("gpu_secrets", {})
    gpu_env = stack.locals.get("gpu_env", "")
    if "DATABASE_URL" in str(gpu_secrets) or "database_url" in str(gpu_secrets):
        problems.append("local.gpu_secrets: holds the database secret")
    if "DATABASE_URL" in str(gpu_env):
        problems.append("local.gpu_env: holds DATABASE_URL")
    task = stack.resource("aws_ecs_task_definition", "gpu")
    containers = str(task.get("container_definitions", ""))
    if "DATABASE_URL" in containers or "control_plane_secrets" in containers:
        problems.append("aws_ecs_task_definition.gpu: gets database credentials")
    if "local.gpu_secrets" not in containers or "local.gpu_env" not in containers:
        problems.append("aws_ecs_task_definition.gpu: not built from local.gpu_env/gpu_secrets")
    if task.get("execution_role_arn") != "${aws_iam_role.execution_gpu.arn}":
        problems.append("aws_ecs_task_definition.gpu: not run by the GPU execution role")
    exec_policy = str(stack.resource("aws_iam_role_policy", "execution_secrets").get("for_each"))
    gpu_part = exec_policy[exec_policy.find("'gpu'") :]
    if "database_url" in gpu_part or "control_plane_secrets" in gpu_part:
        problems.append("aws_iam_role_policy.execution_secrets: GPU agent may read the DB secret")
    task_policy = str(stack.resource("aws_iam_role_policy", "gpu_task").get("policy", ""))
    if "secretsmanager" in task_policy or "database" in task_policy or "rds" in task_policy:
        problems.append("aws_iam_role_policy.gpu_task: GPU task role reaches secrets or the DB")
    return problems


def check_bucket(stack: Stack) -> list[str]:
    problems = []
    sse = stack.resource("aws_s3_bucket_server_side_encryption_configuration", "data")
    if sse.get("bucket") != "${aws_s3_bucket.data.id}" or not sse.get("rule"):
        problems.append("aws_s3_bucket.data: no server-side encryption configuration")
    else:
        default = str(sse["rule"])
        if "aws:kms" not in default:
            problems.append("aws_s3_bucket.data: not encrypted with KMS")
    lifecycle = stack.resource("aws_s3_bucket_lifecycle_configuration", "data")
    rules = _blocks(lifecycle.get("rule"))
    if lifecycle.get("bucket") != "${aws_s3_bucket.data.id}" or not any(
        rule.get("status") == "Enabled" and rule.get("expiration") for rule in rules
    ):
        problems.append("aws_s3_bucket.data: no enabled lifecycle rule with an expiration")
    block = stack.resource("aws_s3_bucket_public_access_block", "data")
    flags = ("block_public_acls", "block_public_policy", "ignore_public_acls")
    for flag in (*flags, "restrict_public_buckets"):
        if block.get(flag) is not True:
            problems.append(f"aws_s3_bucket_public_access_block.data: {flag} is not true")
    return problems


def check_tls_listener(stack: Stack) -> list[str]:
    listeners = [
        body
        for body in stack.resources.get("aws_lb_listener", {}).values()
        if body.get("port") == 443
    ]
    if not listeners:
        return ["aws_lb_listener: none on 443"]
    problems = []
    for body in listeners:
        if body.get("protocol") != "HTTPS":
            problems.append("aws_lb_listener on 443: not HTTPS")
        if body.get("certificate_arn") != "${var.certificate_arn}":
            problems.append("aws_lb_listener on 443: certificate is not var.certificate_arn")
        if "TLS" not in str(body.get("ssl_policy", "")):
            problems.append("aws_lb_listener on 443: no TLS security policy")
    return problems


def check_stop_timeout(stack: Stack) -> list[str]:
    """The GPU container's stopTimeout is at least the stop grace + 10 s."""
    task = str(stack.resource("aws_ecs_task_definition", "gpu").get("container_definitions", ""))
    if "'stopTimeout': '${local.gpu_stop_timeout}'" not in task:
        return ["aws_ecs_task_definition.gpu: stopTimeout is not local.gpu_stop_timeout"]
    expression = str(stack.locals.get("gpu_stop_timeout", ""))
    match = re.fullmatch(r"\$\{min\(var\.gpu_stop_grace_seconds \+ (\d+), ?120\)\}", expression)
    if not match or int(match.group(1)) < 10:
        return [f"local.gpu_stop_timeout: {expression!r} is not min(grace + >=10, 120)"]
    grace = stack.variables.get("gpu_stop_grace_seconds", {})
    if not isinstance(grace.get("default"), int) or grace["default"] + 10 > 120:
        return ["var.gpu_stop_grace_seconds: default + 10 exceeds ECS's 120 s"]
    if "<= 110" not in str(grace.get("validation", "")):
        return ["var.gpu_stop_grace_seconds: not validated to at most 110 (120 - 10)"]
    return []


def check_documented(stack: Stack) -> list[str]:
    return [
        f"var.{name}: no description"
        for name, v in stack.variables.items()
        if not v.get("description")
    ]


def _statements(policy: str) -> list[str]:
    """A parsed policy's statements written out, one string each (split where each begins)."""
    return ["{'Effect'" + part for part in policy.split("{'Effect'")[1:]]


def check_service_rights(stack: Stack) -> list[str]:
    """What each service does at run time, it may do (findings of a review of a first deploy):
    beat writes its schedule where its non-root user can, the API wakes an empty pool (ECS, the
    scaling metric), the webhooks sender presigns output URLs (reads tenant objects), a GPU
    worker sends a preempted job to its own queue, gets a 404 for a missing key (ListBucket with
    no s3:prefix condition, which a HeadObject never matches) and writes its model cache, and
    the target-tracking backstop divides by the desired tasks, not the running ones."""
    problems = []
    services = str(stack.locals.get("control_plane_services", ""))
    if "'beat', '-s', '/tmp/" not in services:
        problems.append("local.control_plane_services: beat's schedule file is not under /tmp")
    policies = stack.locals.get("control_plane_policies", {})
    api = str(policies.get("api", ""))
    for needed in ("${local.gpu_services_resize}", "${local.scaling_metric_put}"):
        if needed not in api:
            problems.append(f"control_plane_policies.api: lacks {needed} (pools_wake)")
    if "s3:GetObject" not in str(policies.get("webhooks", "")):
        problems.append("control_plane_policies.webhooks: cannot read the objects it presigns")
    gpu = _statements(str(stack.resource("aws_iam_role_policy", "gpu_task").get("policy", "")))
    own_queue = [st for st in gpu if "aws_sqs_queue.model[each.key].arn" in st]
    if not any("sqs:SendMessage" in st for st in own_queue):
        problems.append("aws_iam_role_policy.gpu_task: cannot send to its own queue (preemption)")
    if not any("s3:ListBucket" in st and "s3:prefix" not in st for st in gpu):
        problems.append("aws_iam_role_policy.gpu_task: no unconditional ListBucket (404s)")
    user_data = str(stack.resource("aws_launch_template", "gpu").get("user_data", ""))
    if "chown 10001:10001 ${local.gpu_model_cache}" not in user_data:
        problems.append("aws_launch_template.gpu: the model cache is not the GPU user's")
    backstop = str(stack.resource("aws_appautoscaling_policy", "gpu"))
    if "DesiredTaskCount" not in backstop or "RunningTaskCount" in backstop:
        problems.append("aws_appautoscaling_policy.gpu: not DesiredWorkers / DesiredTaskCount")
    return problems


def check_operators_endpoints(stack: Stack) -> list[str]:
    """The API's /metrics has its token (without one it answers 404), and every Celery worker
    of the control plane serves its ops port and is health-checked on it, as the GPU workers."""
    problems = []
    if "SDSAAS_METRICS_TOKEN" not in str(stack.locals.get("control_plane_secrets", "")):
        problems.append("local.control_plane_secrets: no SDSAAS_METRICS_TOKEN")
    services = str(stack.locals.get("control_plane_services", ""))
    # the control worker's entry and the senders' (one entry written for both)
    if services.count("'env': '${local.celery_worker_env}'") != 2:
        problems.append("local.control_plane_services: a Celery worker without the ops port")
    if "SDSAAS_WORKER_OPS_PORT" not in str(stack.locals.get("celery_worker_env", "")):
        problems.append("local.celery_worker_env: no SDSAAS_WORKER_OPS_PORT")
    task = str(stack.resource("aws_ecs_task_definition", "control_plane"))
    plain = re.sub(r"[\\'\"]", "", task)  # the parser's nested quoting, gone
    if "healthCheck: ${local.worker_health_check}" not in plain:
        problems.append("aws_ecs_task_definition.control_plane: no health check for the workers")
    return problems


ALL_CHECKS = (
    check_model_wiring,
    check_service_queues,
    check_visibility,
    check_gpu_has_no_database,
    check_bucket,
    check_tls_listener,
    check_stop_timeout,
    check_service_rights,
    check_operators_endpoints,
    check_documented,
)
