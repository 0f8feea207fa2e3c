# GPU capacity: an Auto Scaling group of one-GPU instances (spot, with an optional on-demand base)
# as an ECS capacity provider with managed scaling, and one ECS service per model that follows the
# DesiredWorkers metric the scheduler publishes (jobs/services/scaling.py).

locals {
  # ECS stops a container this long after SIGTERM: the worker's grace to finish its job, and 10 s
  # to hand it back and report (gpu_worker/watchdog.py). ECS allows 120 at most.
  gpu_stop_timeout = min(var.gpu_stop_grace_seconds + 10, 120)
  gpu_model_cache  = "/var/cache/sdsaas/models"
  worker_ops_port  = 9100

  gpu_env = merge(
    local.gpu_worker_queue_env,
    {
      SDSAAS_ROLE             = "gpu"
      SDSAAS_AWS_REGION       = local.region
      SDSAAS_S3_BUCKET        = aws_s3_bucket.data.bucket
      SDSAAS_GPU_STOP_GRACE_S = tostring(var.gpu_stop_grace_seconds)
      SDSAAS_MODEL_CACHE_DIR  = local.gpu_model_cache
      SDSAAS_LOG_FORMAT       = "json"
      # /healthz (the container's health check), /readyz and /metrics (sdsaas/worker_ops.py).
      SDSAAS_WORKER_OPS_PORT = tostring(local.worker_ops_port)
    },
    var.gpu_extra_environment,
  )
}

data "aws_ssm_parameter" "gpu_ami" {
  name = var.gpu_ami_ssm_parameter
}

resource "aws_launch_template" "gpu" {
  name_prefix            = "${var.prefix}-gpu-"
  image_id               = data.aws_ssm_parameter.gpu_ami.value
  update_default_version = true
  vpc_security_group_ids = [aws_security_group.gpu.id]
  iam_instance_profile {
    arn = aws_iam_instance_profile.gpu.arn
  }
  # IMDSv2 only. Hop limit 2: the worker reads the spot interruption notice from inside its
  # container (gpu_worker/spot.py), one hop further than the instance.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 2
    instance_metadata_tags      = "disabled"
  }
  monitoring {
    enabled = true
  }
  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.gpu_root_volume_gib
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = aws_kms_key.this.arn
      delete_on_termination = true
    }
  }
  user_data = base64encode(<<-EOT
    #!/bin/bash
    cat >> /etc/ecs/ecs.config <<'CFG'
    ECS_CLUSTER=${aws_ecs_cluster.this.name}
    ECS_ENABLE_GPU_SUPPORT=true
    ECS_ENABLE_SPOT_INSTANCE_DRAINING=true
    ECS_ENABLE_TASK_IAM_ROLE=true
    ECS_CONTAINER_STOP_TIMEOUT=${local.gpu_stop_timeout}s
    ECS_IMAGE_PULL_BEHAVIOR=prefer-cached
    CFG
    mkdir -p ${local.gpu_model_cache}
    # The GPU image runs as uid 10001 (deploy/docker/gpu.Dockerfile): the cache is its to write.
    chown 10001:10001 ${local.gpu_model_cache}
    EOT
  )
  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.prefix}-gpu" })
  }
  tags = local.tags
}

resource "aws_autoscaling_group" "gpu" {
  name_prefix         = "${var.prefix}-gpu-"
  vpc_zone_identifier = local.private_subnet_ids
  min_size            = 0
  max_size            = var.gpu_max_instances
  # ECS managed scaling and managed termination protection need this: the capacity provider
  # decides which instances may go (none that runs a task).
  protect_from_scale_in = true
  capacity_rebalance    = true
  mixed_instances_policy {
    instances_distribution {
      on_demand_base_capacity                  = var.gpu_on_demand_base_capacity
      on_demand_percentage_above_base_capacity = var.gpu_on_demand_percentage_above_base
      spot_allocation_strategy                 = "price-capacity-optimized"
    }
    launch_template {
      launch_template_specification {
        launch_template_id = aws_launch_template.gpu.id
        version            = "$Latest"
      }
      dynamic "override" {
        for_each = var.gpu_instance_types
        content {
          instance_type = override.value
        }
      }
    }
  }
  tag {
    key                 = "AmazonECSManaged"
    value               = "true"
    propagate_at_launch = true
  }
  dynamic "tag" {
    for_each = local.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
  # The capacity provider sets the desired capacity.
  lifecycle {
    ignore_changes = [desired_capacity]
  }
}

resource "aws_ecs_capacity_provider" "gpu" {
  name = "${var.prefix}-gpu"
  auto_scaling_group_provider {
    auto_scaling_group_arn         = aws_autoscaling_group.gpu.arn
    managed_termination_protection = "ENABLED"
    managed_draining               = "ENABLED"
    managed_scaling {
      status                    = "ENABLED"
      target_capacity           = 100
      minimum_scaling_step_size = 1
      maximum_scaling_step_size = 10
      # New instances count from boot; a GPU AMI with the image pull takes a few minutes.
      instance_warmup_period = 180
    }
  }
  tags = local.tags
}

# --- One service per model ----------------------------------------------------------------------------

resource "aws_ecs_task_definition" "gpu" {
  for_each                 = var.model_slugs
  family                   = "${var.prefix}-gpu-${each.key}"
  requires_compatibilities = ["EC2"]
  network_mode             = "awsvpc"
  cpu                      = var.gpu_task_cpu
  memory                   = var.gpu_task_memory
  execution_role_arn       = aws_iam_role.execution_gpu.arn
  task_role_arn            = aws_iam_role.gpu_task[each.key].arn
  # Weights downloaded once per instance survive the task (the next worker on it loads from disk).
  volume {
    name      = "model-cache"
    host_path = local.gpu_model_cache
  }
  container_definitions = jsonencode([{
    name                 = "worker"
    image                = var.gpu_image
    essential            = true
    command              = ["celery", "-A", "gpu_worker.worker", "worker", "-P", "solo", "-Q", "${var.prefix}-model-${each.key}"]
    resourceRequirements = [{ type = "GPU", value = "1" }]
    environment          = [for name, value in local.gpu_env : { name = name, value = value }]
    # No DATABASE_URL and no database secret: GPU workers report through the control queue.
    secrets     = [for name, arn in local.gpu_secrets : { name = name, valueFrom = arn }]
    stopTimeout = local.gpu_stop_timeout
    # Alive while the worker process answers; ECS replaces a task that stops answering.
    healthCheck = {
      command     = local.worker_health_check.command
      interval    = 30
      timeout     = 5
      retries     = 3
      startPeriod = 120 # the model's first load
    }
    mountPoints = [{ sourceVolume = "model-cache", containerPath = local.gpu_model_cache }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.service["gpu-${each.key}"].name
        awslogs-region        = local.region
        awslogs-stream-prefix = "worker"
      }
    }
  }])
  tags = local.tags
}

resource "aws_ecs_service" "gpu" {
  for_each        = var.model_slugs
  name            = "${var.prefix}-gpu-${each.key}"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.gpu[each.key].arn
  # From zero; the scaling policy and the control plane's wake-up (UpdateService to 1) set it.
  desired_count = 0
  capacity_provider_strategy {
    capacity_provider = aws_ecs_capacity_provider.gpu.name
    weight            = 1
  }
  # A deploy starts new workers before old ones stop; an old one busy with a job is protected
  # from the stop until the job ends (gpu_worker/protection.py).
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  network_configuration {
    subnets          = local.private_subnet_ids
    security_groups  = [aws_security_group.gpu.id]
    assign_public_ip = false
  }
  propagate_tags = "SERVICE"
  tags           = local.tags
  lifecycle {
    ignore_changes = [desired_count]
  }
  depends_on = [aws_ecs_cluster_capacity_providers.this]
}

resource "aws_appautoscaling_target" "gpu" {
  for_each           = var.model_slugs
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.gpu[each.key].name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = 0
  max_capacity       = var.gpu_max_workers
}

# The backstop of the control plane, which sets each service to DesiredWorkers every 10 s itself
# (README: target tracking alone takes minutes each way). Target tracking on DesiredWorkers /
# the service's desired tasks with target 1 sets the capacity (the desired count) to
# ceil(current x metric / target) = DesiredWorkers: the same number. Divided by running tasks
# instead, it would overshoot while new tasks wait for an instance (6 asked, 1 running: 36).
# With no desired task the ratio is DesiredWorkers itself.
resource "aws_appautoscaling_policy" "gpu" {
  for_each           = var.model_slugs
  name               = "${var.prefix}-gpu-${each.key}-desired-workers"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.gpu[each.key].service_namespace
  resource_id        = aws_appautoscaling_target.gpu[each.key].resource_id
  scalable_dimension = aws_appautoscaling_target.gpu[each.key].scalable_dimension
  target_tracking_scaling_policy_configuration {
    target_value       = 1.0
    scale_out_cooldown = 0
    scale_in_cooldown  = 60
    customized_metric_specification {
      metrics {
        id          = "desired"
        return_data = false
        metric_stat {
          stat = "Maximum"
          metric {
            namespace   = var.scaling_metric_namespace
            metric_name = "DesiredWorkers"
            dimensions {
              name  = "Deployment"
              value = var.prefix
            }
            dimensions {
              name  = "Model"
              value = each.key
            }
          }
        }
      }
      metrics {
        id          = "tasks"
        return_data = false
        metric_stat {
          stat = "Average"
          metric {
            namespace   = "ECS/ContainerInsights"
            metric_name = "DesiredTaskCount"
            dimensions {
              name  = "ClusterName"
              value = aws_ecs_cluster.this.name
            }
            dimensions {
              name  = "ServiceName"
              value = aws_ecs_service.gpu[each.key].name
            }
          }
        }
      }
      metrics {
        id          = "ratio"
        label       = "DesiredWorkers per desired task"
        expression  = "IF(FILL(tasks, 0) > 0, desired / FILL(tasks, 0), desired)"
        return_data = true
      }
    }
  }
}
