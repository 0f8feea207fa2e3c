# The queues and bucket of one sdsaas environment. Compute (ECS on EC2 GPU instances, the API
# service, RDS) is added with the GPU worker pools.

terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = { source = "hashicorp/aws", version = ">= 5.0" }
  }
}

variable "prefix" {
  description = "Queue name prefix: SDSAAS_SQS_QUEUE_PREFIX of the services."
  type        = string
  default     = "sdsaas"
}

variable "model_slugs" {
  description = "Base models of the catalog; each gets its own queue and dead-letter queue."
  type        = set(string)
}

# The four timings below must satisfy the rule of sdsaas.settings.check_visibility_timing, which
# the services apply at start-up; tests/deploy/test_terraform.py checks these defaults with it.
variable "visibility_timeout_seconds" {
  description = "Base visibility timeout of the model queues (SDSAAS_SQS_VISIBILITY_TIMEOUT): a lost worker's job is delivered again within about this long; running jobs are extended by the heartbeat."
  type        = number
  default     = 60
}

variable "gpu_heartbeat_seconds" {
  description = "SDSAAS_GPU_HEARTBEAT_S of the GPU workers: seconds between extensions of a running job's message."
  type        = number
  default     = 10
}

variable "gpu_outage_tolerance_seconds" {
  description = "SDSAAS_GPU_OUTAGE_TOLERANCE_S of the GPU workers: at most visibility_timeout_seconds - 2 x gpu_heartbeat_seconds."
  type        = number
  default     = 40
}

variable "gpu_job_time_limit_seconds" {
  description = "SDSAAS_GPU_JOB_TIME_LIMIT_S of the GPU workers: the heartbeat lets a job's message go after this long."
  type        = number
  default     = 1800
}

variable "max_receives" {
  description = "Deliveries of one job message before it is dead-lettered."
  type        = number
  default     = 3
}

variable "bucket_name" {
  description = "SDSAAS_S3_BUCKET: uploads and generated images."
  type        = string
}

resource "aws_sqs_queue" "model_dlq" {
  for_each                  = var.model_slugs
  name                      = "${var.prefix}-model-${each.key}-dlq"
  message_retention_seconds = 1209600
}

resource "aws_sqs_queue" "model" {
  for_each                   = var.model_slugs
  name                       = "${var.prefix}-model-${each.key}"
  visibility_timeout_seconds = var.visibility_timeout_seconds
  receive_wait_time_seconds  = 10
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.model_dlq[each.key].arn
    maxReceiveCount     = var.max_receives
  })
}

resource "aws_sqs_queue" "control" {
  name                       = "${var.prefix}-control"
  visibility_timeout_seconds = 300
  receive_wait_time_seconds  = 10
}

resource "aws_s3_bucket" "data" {
  bucket = var.bucket_name
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket                  = aws_s3_bucket.data.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

output "model_queue_urls" {
  value = { for slug, queue in aws_sqs_queue.model : slug => queue.url }
}

# The queue part of the API's and control worker's environment: Terraform owns the queues and
# their attributes here, so the application only looks them up (SDSAAS_SQS_MANAGE_QUEUES).
output "control_plane_environment" {
  value = {
    SDSAAS_SQS_QUEUE_PREFIX       = var.prefix
    SDSAAS_SQS_VISIBILITY_TIMEOUT = tostring(var.visibility_timeout_seconds)
    SDSAAS_SQS_MAX_RECEIVES       = tostring(var.max_receives)
    SDSAAS_SQS_MANAGE_QUEUES      = "false"
  }
}

# The timing part of the GPU workers' environment (for their task definitions, added with the
# pools): the workers must extend messages by the timeout the queues were created with.
output "gpu_worker_environment" {
  value = {
    SDSAAS_SQS_QUEUE_PREFIX       = var.prefix
    SDSAAS_SQS_VISIBILITY_TIMEOUT = tostring(var.visibility_timeout_seconds)
    SDSAAS_SQS_MAX_RECEIVES       = tostring(var.max_receives)
    SDSAAS_GPU_HEARTBEAT_S        = tostring(var.gpu_heartbeat_seconds)
    SDSAAS_GPU_OUTAGE_TOLERANCE_S = tostring(var.gpu_outage_tolerance_seconds)
    SDSAAS_GPU_JOB_TIME_LIMIT_S   = tostring(var.gpu_job_time_limit_seconds)
  }
}
