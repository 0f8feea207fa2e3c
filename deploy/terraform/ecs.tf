# ECS: one cluster; the control plane on Fargate (API behind the load balancer, control worker,
# webhook and Discord senders, the scheduler), the GPU workers on EC2 (gpu.tf).

resource "aws_ecs_cluster" "this" {
  name = var.prefix
  # Container Insights: DesiredTaskCount (the GPU scaling policies divide DesiredWorkers by it)
  # and RunningTaskCount (the dashboard).
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
  tags = local.tags
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE", aws_ecs_capacity_provider.gpu.name]
  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

locals {
  public_base_url = "https://${var.domain_name}"

  # Everything the control-plane services are told, secrets apart (local.control_plane_secrets).
  control_plane_env = merge(
    {
      SDSAAS_AWS_REGION                = local.region
      SDSAAS_S3_BUCKET                 = aws_s3_bucket.data.bucket
      SDSAAS_ALLOWED_HOSTS             = var.domain_name
      SDSAAS_PUBLIC_BASE_URL           = local.public_base_url
      SDSAAS_SCALING_ECS_CLUSTER       = aws_ecs_cluster.this.name
      SDSAAS_SCALING_METRIC_NAMESPACE  = var.scaling_metric_namespace
      SDSAAS_SCALING_MAX_WORKERS       = tostring(var.gpu_max_workers)
      SDSAAS_SCALING_ACCEPTABLE_WAIT_S = tostring(var.scaling_acceptable_wait_seconds)
      SDSAAS_SCALING_SCALE_IN_DELAY_S  = tostring(var.scaling_scale_in_delay_seconds)
      SDSAAS_SCALING_KEEP_ALIVE_S      = tostring(var.scaling_keep_alive_seconds)
      SDSAAS_LOG_FORMAT                = "json"
    },
    local.control_plane_queue_env,
    var.extra_environment,
  )

  # The Celery workers of the control plane serve /healthz on the ops port (sdsaas/worker_ops.py),
  # which their task definitions check, as the GPU workers' do.
  celery_worker_env = { SDSAAS_WORKER_OPS_PORT = tostring(local.worker_ops_port) }
  worker_health_check = {
    command     = ["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${local.worker_ops_port}/healthz', timeout=3)"]
    interval    = 30
    timeout     = 5
    retries     = 3
    startPeriod = 60
  }

  # The control-plane services: command, role (SDSAAS_ROLE), size and count.
  control_plane_services = merge({
    api = {
      command = ["gunicorn", "-c", "python:sdsaas.gunicorn_conf", "sdsaas.wsgi"]
      role    = "api"
      cpu     = var.api_cpu
      memory  = var.api_memory
      count   = var.api_desired_count
      sg      = aws_security_group.api.id
      env     = { SDSAAS_API_BIND = "0.0.0.0:8000", SDSAAS_API_WORKERS = tostring(var.api_workers) }
    }
    control = {
      command = ["celery", "-A", "sdsaas", "worker", "-Q", "${var.prefix}-control"]
      role    = "control"
      cpu     = var.worker_cpu
      memory  = var.worker_memory
      count   = var.control_desired_count
      sg      = aws_security_group.workers.id
      env     = local.celery_worker_env
    }
    # Exactly one: two beats would send every periodic task twice.
    scheduler = {
      # Its schedule file where the non-root user may write: /app is root's and read-only.
      command = ["celery", "-A", "sdsaas", "beat", "-s", "/tmp/celerybeat-schedule"]
      role    = "control"
      cpu     = var.worker_cpu
      memory  = var.worker_memory
      count   = 1
      sg      = aws_security_group.workers.id
      env     = {}
    }
    }, {
    # The senders: threads, since each task waits on a remote HTTP server.
    for sender in ["webhooks", "discord"] : sender => {
      command = ["celery", "-A", "sdsaas", "worker", "-P", "threads", "-c", "4", "-Q", "${var.prefix}-${sender}"]
      role    = "control"
      cpu     = var.worker_cpu
      memory  = var.worker_memory
      count   = var.sender_desired_count
      sg      = aws_security_group.workers.id
      env     = local.celery_worker_env
    }
  })
}

resource "aws_cloudwatch_log_group" "service" {
  for_each          = toset(concat(keys(local.control_plane_services), [for slug in var.model_slugs : "gpu-${slug}"]))
  name              = "/sdsaas/${var.prefix}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_ecs_task_definition" "control_plane" {
  for_each                 = local.control_plane_services
  family                   = "${var.prefix}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = each.value.cpu
  memory                   = each.value.memory
  execution_role_arn       = aws_iam_role.execution_control_plane.arn
  task_role_arn            = aws_iam_role.task[each.key].arn
  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }
  container_definitions = jsonencode([merge({
    name      = each.key
    image     = var.web_image
    essential = true
    command   = each.value.command
    environment = [
      for name, value in merge(local.control_plane_env, each.value.env, { SDSAAS_ROLE = each.value.role }) :
      { name = name, value = value }
    ]
    secrets      = [for name, arn in local.control_plane_secrets : { name = name, valueFrom = arn }]
    portMappings = each.key == "api" ? [{ containerPort = 8000, protocol = "tcp" }] : []
    # Celery's warm shutdown finishes the tasks in hand (acks_late: an unfinished one is
    # delivered again); gunicorn drains its requests.
    stopTimeout = 60
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.service[each.key].name
        awslogs-region        = local.region
        awslogs-stream-prefix = each.key
      }
    }
    # (a for with if: an object attribute present or not, where a conditional's two objects
    # would have to be of one type)
    }, {
    for key, check in { healthCheck = local.worker_health_check } :
    key => check if contains(keys(each.value.env), "SDSAAS_WORKER_OPS_PORT")
  })])
  tags = local.tags
}

resource "aws_ecs_service" "control_plane" {
  for_each        = local.control_plane_services
  name            = "${var.prefix}-${each.key}"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.control_plane[each.key].arn
  desired_count   = var.start_services ? each.value.count : 0
  launch_type     = "FARGATE"
  # The scheduler never runs twice during a deploy; the others roll with their full count up.
  deployment_minimum_healthy_percent = each.key == "scheduler" ? 0 : 100
  deployment_maximum_percent         = each.key == "scheduler" ? 100 : 200
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  network_configuration {
    subnets          = local.private_subnet_ids
    security_groups  = [each.value.sg]
    assign_public_ip = false
  }
  dynamic "load_balancer" {
    for_each = each.key == "api" ? [1] : []
    content {
      target_group_arn = aws_lb_target_group.api.arn
      container_name   = "api"
      container_port   = 8000
    }
  }
  health_check_grace_period_seconds = each.key == "api" ? 60 : null
  propagate_tags                    = "SERVICE"
  tags                              = local.tags
  depends_on                        = [aws_lb_listener.https]
}

# --- Load balancer: TLS at the ALB, plain HTTP to gunicorn (SDSAAS_PROXY_SSL_HEADER) ------------

resource "aws_lb" "api" {
  #checkov:skip=CKV2_AWS_28:No WAF by default: every API call is authenticated by key and rate-limited by the app's quotas; attach an aws_wafv2_web_acl_association to the alb_arn output where a deployment wants managed rules.
  name                       = "${var.prefix}-api"
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = local.public_subnet_ids
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = var.alb_deletion_protection
  access_logs {
    bucket  = aws_s3_bucket.logs.id
    prefix  = "alb"
    enabled = true
  }
  tags       = local.tags
  depends_on = [aws_s3_bucket_policy.logs]
}

resource "aws_lb_target_group" "api" {
  name        = "${var.prefix}-api"
  port        = 8000
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = local.vpc_id
  # gunicorn finishes requests in flight within this.
  deregistration_delay = 30
  health_check {
    path                = "/healthz"
    matcher             = "200"
    interval            = 15
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
  tags = local.tags
}

resource "aws_lb_listener" "https" {
  #checkov:skip=CKV_AWS_103:The policy is ELBSecurityPolicy-TLS13-1-2-2021-06 (TLS 1.3 and 1.2 only); this checkov release predates the TLS13 policies and knows only older names.
  load_balancer_arn = aws_lb.api.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api.arn
  }
  tags = local.tags
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.api.arn
  port              = 80
  protocol          = "HTTP"
  default_action {
    type = "redirect"
    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }
  tags = local.tags
}
