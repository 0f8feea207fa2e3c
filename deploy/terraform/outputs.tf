locals {
  # The queue part of the control plane's environment: Terraform owns the queues and their
  # attributes, so the application only looks them up (SDSAAS_SQS_MANAGE_QUEUES).
  control_plane_queue_env = {
    SDSAAS_SQS_QUEUE_PREFIX       = var.prefix
    SDSAAS_SQS_VISIBILITY_TIMEOUT = tostring(var.visibility_timeout_seconds)
    SDSAAS_SQS_MAX_RECEIVES       = tostring(var.max_receives)
    SDSAAS_SQS_MANAGE_QUEUES      = "false"
  }
  # The timing part of the GPU workers' environment: they must extend messages by the timeout the
  # queues were created with.
  gpu_worker_queue_env = {
    SDSAAS_SQS_QUEUE_PREFIX       = var.prefix
    SDSAAS_SQS_VISIBILITY_TIMEOUT = tostring(var.visibility_timeout_seconds)
    SDSAAS_SQS_MAX_RECEIVES       = tostring(var.max_receives)
    SDSAAS_SQS_MANAGE_QUEUES      = "false"
    SDSAAS_GPU_HEARTBEAT_S        = tostring(var.gpu_heartbeat_seconds)
    SDSAAS_GPU_OUTAGE_TOLERANCE_S = tostring(var.gpu_outage_tolerance_seconds)
    SDSAAS_GPU_JOB_TIME_LIMIT_S   = tostring(var.gpu_job_time_limit_seconds)
  }
}

output "model_queue_urls" {
  description = "URL of each model's queue, by slug."
  value       = { for slug, queue in aws_sqs_queue.model : slug => queue.url }
}

output "control_plane_environment" {
  description = "The queue settings of the API and control-plane workers (also set in their task definitions)."
  value       = local.control_plane_queue_env
}

output "gpu_worker_environment" {
  description = "The queue and timing settings of the GPU workers (also set in their task definitions)."
  value       = local.gpu_worker_queue_env
}

output "alb_dns_name" {
  description = "DNS name of the load balancer: point domain_name at it (CNAME, or a Route 53 alias with alb_zone_id)."
  value       = aws_lb.api.dns_name
}

output "alb_zone_id" {
  description = "Hosted zone of the load balancer, for a Route 53 alias record."
  value       = aws_lb.api.zone_id
}

output "alb_arn" {
  description = "ARN of the load balancer (e.g. to associate a WAF web ACL)."
  value       = aws_lb.api.arn
}

output "cluster_name" {
  description = "The ECS cluster (SDSAAS_SCALING_ECS_CLUSTER)."
  value       = aws_ecs_cluster.this.name
}

output "gpu_service_names" {
  description = "The GPU service of each model, by slug (<prefix>-gpu-<slug>)."
  value       = { for slug, svc in aws_ecs_service.gpu : slug => svc.name }
}

output "migrate_command" {
  description = "An `aws ecs run-task` command that runs the migrations once with the API's task definition, network and secrets."
  value = join(" ", [
    "aws ecs run-task --region ${local.region} --cluster ${aws_ecs_cluster.this.name}",
    "--launch-type FARGATE --task-definition ${aws_ecs_task_definition.control_plane["api"].family}",
    "--network-configuration 'awsvpcConfiguration={subnets=[${join(",", local.private_subnet_ids)}],securityGroups=[${aws_security_group.api.id}],assignPublicIp=DISABLED}'",
    "--overrides '{\"containerOverrides\":[{\"name\":\"api\",\"command\":[\"python\",\"manage.py\",\"migrate\",\"--noinput\"]}]}'",
  ])
}

output "database_endpoint" {
  description = "host:port of the Postgres database (the password is only in the DATABASE_URL secret)."
  value       = aws_db_instance.this.endpoint
}

output "database_url_secret_arn" {
  description = "Secrets Manager ARN of DATABASE_URL."
  value       = aws_secretsmanager_secret.database_url.arn
}

output "metrics_token_secret_arn" {
  description = "Secrets Manager ARN of the bearer token for the API's /metrics (give it to the scraper)."
  value       = aws_secretsmanager_secret.metrics_token.arn
}

output "bucket_name" {
  description = "The data bucket (SDSAAS_S3_BUCKET); put model weights under models/."
  value       = aws_s3_bucket.data.bucket
}

output "alarm_topic_arn" {
  description = "SNS topic of the alarms; subscribe more endpoints to it."
  value       = aws_sns_topic.alarms.arn
}

output "dashboard_name" {
  description = "The CloudWatch dashboard of this deployment."
  value       = var.prefix
}
