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

variable "visibility_timeout_seconds" {
  description = "Longer than the longest allowed job (SDSAAS_SQS_VISIBILITY_TIMEOUT)."
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
