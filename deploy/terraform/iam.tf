# IAM: one task role per service with what that service does and nothing more, and two execution
# roles (the ECS agent's: pull the image, write the log, read the service's secrets). GPU roles
# are per model: their own queue, the control queue, weights and outputs; no database secret.

locals {
  bucket_arn         = aws_s3_bucket.data.arn
  tenants_objects    = "${aws_s3_bucket.data.arn}/tenants/*"
  model_queue_arns   = [for q in aws_sqs_queue.model : q.arn]
  service_queue_arns = [for q in aws_sqs_queue.service : q.arn]
  all_dlq_arns       = concat([for q in aws_sqs_queue.model_dlq : q.arn], [for q in aws_sqs_queue.service_dlq : q.arn])
  gpu_service_arns = [
    for slug in var.model_slugs :
    "arn:${local.partition}:ecs:${local.region}:${local.account_id}:service/${aws_ecs_cluster.this.name}/${var.prefix}-gpu-${slug}"
  ]
  sqs_consume = [
    "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes", "sqs:GetQueueUrl",
  ]
  sqs_send = ["sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"]
  # The buckets of var.model_weights_s3_arns (object ARNs: arn:aws:s3:::bucket/prefix/*).
  model_weights_bucket_arns = distinct([for arn in var.model_weights_s3_arns : split("/", arn)[0]])
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    # Only tasks of this account may take these roles (confused deputy).
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# --- Execution roles ------------------------------------------------------------------------------

resource "aws_iam_role" "execution_control_plane" {
  name               = "${var.prefix}-exec-control-plane"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

resource "aws_iam_role" "execution_gpu" {
  name               = "${var.prefix}-exec-gpu"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  for_each = {
    control_plane = aws_iam_role.execution_control_plane.name
    gpu           = aws_iam_role.execution_gpu.name
  }
  role       = each.value
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

resource "aws_iam_role_policy" "execution_secrets" {
  for_each = {
    control_plane = { role = aws_iam_role.execution_control_plane.id, secrets = values(local.control_plane_secrets) }
    # The GPU agent can fetch the GPU workers' own Django key and nothing else.
    gpu = { role = aws_iam_role.execution_gpu.id, secrets = values(local.gpu_secrets) }
  }
  name = "read-secrets"
  role = each.value.role
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      { Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = each.value.secrets },
      {
        Effect    = "Allow", Action = ["kms:Decrypt"], Resource = [aws_kms_key.this.arn]
        Condition = { StringEquals = { "kms:ViaService" = "secretsmanager.${local.region}.amazonaws.com" } }
      },
    ]
  })
}

# --- Task roles of the control plane ------------------------------------------------------------

locals {
  kms_use = {
    Effect   = "Allow"
    Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
    Resource = [aws_kms_key.this.arn]
  }
  # kombu resolves queue names to URLs; ListQueues cannot be limited to a resource.
  sqs_list = { Effect = "Allow", Action = ["sqs:ListQueues"], Resource = ["*"] }
  scaling_metric_put = {
    Effect    = "Allow", Action = ["cloudwatch:PutMetricData"], Resource = ["*"]
    Condition = { StringEquals = { "cloudwatch:namespace" = var.scaling_metric_namespace } }
  }
  gpu_services_resize = { Effect = "Allow", Action = ["ecs:UpdateService", "ecs:DescribeServices"], Resource = local.gpu_service_arns }

  control_plane_policies = {
    # Publishes jobs to the model queues (and events to the others), stores uploads, presigns
    # output URLs, and wakes an empty GPU pool at once after a publish (jobs/services/scaling.py
    # pools_wake: the scaling metric, UpdateService on the GPU services only).
    api = [
      local.kms_use, local.sqs_list,
      { Effect = "Allow", Action = local.sqs_send, Resource = concat(local.model_queue_arns, local.service_queue_arns) },
      { Effect = "Allow", Action = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], Resource = [local.tenants_objects] },
      local.scaling_metric_put,
      local.gpu_services_resize,
    ]
    # Applies events, admits and republishes jobs, writes cancel markers, expires objects, reads
    # the model queues' depths and the dead-letter queues, publishes the scaling metric and wakes
    # an empty GPU pool (UpdateService on the GPU services only).
    control = [
      local.kms_use, local.sqs_list,
      { Effect = "Allow", Action = concat(local.sqs_consume, ["sqs:SendMessage"]), Resource = concat(local.model_queue_arns, local.service_queue_arns, local.all_dlq_arns) },
      { Effect = "Allow", Action = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], Resource = [local.tenants_objects] },
      {
        Effect    = "Allow", Action = ["s3:ListBucket"], Resource = [local.bucket_arn]
        Condition = { StringLike = { "s3:prefix" = ["tenants/*"] } }
      },
      local.scaling_metric_put,
      local.gpu_services_resize,
    ]
    # One attempt of one webhook message per task: its own queue, and read access to tenant
    # objects, which the output URLs in the body it builds at each attempt are presigned with (a
    # presigned URL can do what its signer can).
    webhooks = [
      local.kms_use, local.sqs_list,
      { Effect = "Allow", Action = concat(local.sqs_consume, ["sqs:SendMessage"]), Resource = [aws_sqs_queue.service["webhooks"].arn] },
      { Effect = "Allow", Action = ["s3:GetObject"], Resource = [local.tenants_objects] },
    ]
    # Discord replies attach the job's image: its own queue, read access to tenant objects.
    discord = [
      local.kms_use, local.sqs_list,
      { Effect = "Allow", Action = concat(local.sqs_consume, ["sqs:SendMessage"]), Resource = [aws_sqs_queue.service["discord"].arn] },
      { Effect = "Allow", Action = ["s3:GetObject"], Resource = [local.tenants_objects] },
    ]
    # celery beat only sends the periodic tasks (run by the control worker and the senders).
    scheduler = [
      local.kms_use, local.sqs_list,
      { Effect = "Allow", Action = local.sqs_send, Resource = local.service_queue_arns },
    ]
  }
}

resource "aws_iam_role" "task" {
  for_each           = local.control_plane_policies
  name               = "${var.prefix}-task-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "task" {
  for_each = local.control_plane_policies
  name     = "sdsaas-${each.key}"
  role     = aws_iam_role.task[each.key].id
  policy   = jsonencode({ Version = "2012-10-17", Statement = each.value })
}

# --- GPU task roles, one per model --------------------------------------------------------------

resource "aws_iam_role" "gpu_task" {
  for_each           = var.model_slugs
  name               = "${var.prefix}-task-gpu-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "gpu_task" {
  for_each = var.model_slugs
  name     = "sdsaas-gpu"
  role     = aws_iam_role.gpu_task[each.key].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      local.kms_use,
      local.sqs_list,
      # Its own model's jobs, received and extended by the heartbeat, and sent again as their
      # next attempt when it is preempted (gpu_worker/tasks.py: a preemption uses no receive).
      { Effect = "Allow", Action = concat(local.sqs_consume, ["sqs:SendMessage"]), Resource = [aws_sqs_queue.model[each.key].arn] },
      # Its reports (started, progress, finished, failed) to the control plane.
      { Effect = "Allow", Action = local.sqs_send, Resource = [aws_sqs_queue.service["control"].arn] },
      # Weights, and the job's inputs (uploads, fetched images) and cancel marker.
      { Effect = "Allow", Action = ["s3:GetObject"], Resource = concat(["${local.bucket_arn}/models/*", local.tenants_objects], var.model_weights_s3_arns) },
      # Listing: a weights folder, and an honest 404 for a missing key (the cancel check is a
      # HeadObject, which S3 answers 403 without ListBucket, and an s3:prefix condition never
      # matches a HeadObject). The names it lists are of objects it may read already.
      { Effect = "Allow", Action = ["s3:ListBucket"], Resource = concat([local.bucket_arn], local.model_weights_bucket_arns) },
      # Its images, under the job's prefix only.
      { Effect = "Allow", Action = ["s3:PutObject"], Resource = ["${local.bucket_arn}/tenants/*/jobs/*"] },
      # Scale-in protection while it holds a job: the ECS agent's endpoint (ECS_AGENT_URI) calls
      # these with the task's role.
      {
        Effect   = "Allow", Action = ["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"]
        Resource = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${aws_ecs_cluster.this.name}/*"]
      },
    ]
  })
}

# --- GPU instances ----------------------------------------------------------------------------------

resource "aws_iam_role" "gpu_instance" {
  name = "${var.prefix}-gpu-instance"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow", Action = "sts:AssumeRole"
      Principal = { Service = "ec2.amazonaws.com" }
    }]
  })
  tags = local.tags
}

# The ECS agent's own rights (register the instance, poll for tasks); the tasks use their roles.
resource "aws_iam_role_policy_attachment" "gpu_instance" {
  role       = aws_iam_role.gpu_instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
}

resource "aws_iam_instance_profile" "gpu" {
  name = "${var.prefix}-gpu-instance"
  role = aws_iam_role.gpu_instance.name
  tags = local.tags
}
