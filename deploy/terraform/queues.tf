# The queues the application expects (sdsaas/contract/names.py): one per catalog model, the control
# queue (GPU workers' events), and the webhook and Discord senders' queues; each with its
# dead-letter queue "<queue>-dlq". The application only looks them up (SDSAAS_SQS_MANAGE_QUEUES).
#
# Visibility: every queue's base timeout is visibility_timeout_seconds, the same value the
# services are given (SDSAAS_SQS_VISIBILITY_TIMEOUT) and receive with; a GPU worker extends the
# message of a running job every gpu_heartbeat_seconds, up to gpu_job_time_limit_seconds
# (check_visibility_timing holds these together; tests/deploy checks the defaults).

locals {
  # Queues other than the model queues, by the name suffix the application gives them.
  service_queues = toset(["control", "webhooks", "discord"])
}

resource "aws_sqs_queue" "model_dlq" {
  for_each                  = var.model_slugs
  name                      = "${var.prefix}-model-${each.key}-dlq"
  message_retention_seconds = var.dead_letter_retention_seconds
  kms_master_key_id         = aws_kms_key.this.arn
  tags                      = local.tags
}

resource "aws_sqs_queue" "model" {
  for_each                   = var.model_slugs
  name                       = "${var.prefix}-model-${each.key}"
  visibility_timeout_seconds = var.visibility_timeout_seconds
  receive_wait_time_seconds  = 10
  kms_master_key_id          = aws_kms_key.this.arn
  # Data keys reused for 5 minutes: a few KMS calls per worker instead of one per message.
  kms_data_key_reuse_period_seconds = 300
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.model_dlq[each.key].arn
    maxReceiveCount     = var.max_receives
  })
  tags = local.tags
}

resource "aws_sqs_queue" "service_dlq" {
  for_each                  = local.service_queues
  name                      = "${var.prefix}-${each.key}-dlq"
  message_retention_seconds = var.dead_letter_retention_seconds
  kms_master_key_id         = aws_kms_key.this.arn
  tags                      = local.tags
}

resource "aws_sqs_queue" "service" {
  for_each                          = local.service_queues
  name                              = "${var.prefix}-${each.key}"
  visibility_timeout_seconds        = var.visibility_timeout_seconds
  receive_wait_time_seconds         = 10
  kms_master_key_id                 = aws_kms_key.this.arn
  kms_data_key_reuse_period_seconds = 300
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.service_dlq[each.key].arn
    maxReceiveCount     = var.max_receives
  })
  tags = local.tags
}

# Only the queue a dead-letter queue serves may move messages into it.
resource "aws_sqs_queue_redrive_allow_policy" "model_dlq" {
  for_each  = var.model_slugs
  queue_url = aws_sqs_queue.model_dlq[each.key].id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.model[each.key].arn]
  })
}

resource "aws_sqs_queue_redrive_allow_policy" "service_dlq" {
  for_each  = local.service_queues
  queue_url = aws_sqs_queue.service_dlq[each.key].id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.service[each.key].arn]
  })
}
