# Alarms (to an encrypted SNS topic) and one dashboard: queue age and dead letters per queue, API
# 5xx, webhook delivery failure rate, and each GPU pool against its DesiredWorkers.

resource "aws_sns_topic" "alarms" {
  name              = "${var.prefix}-alarms"
  kms_master_key_id = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_sns_topic_subscription" "alarm_email" {
  count     = var.alarm_email == null ? 0 : 1
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

locals {
  alarm_actions = [aws_sns_topic.alarms.arn]
  all_queues = merge(
    { for slug, q in aws_sqs_queue.model : "model-${slug}" => q.name },
    { for name, q in aws_sqs_queue.service : name => q.name },
  )
  all_dlqs = merge(
    { for slug, q in aws_sqs_queue.model_dlq : "model-${slug}" => q.name },
    { for name, q in aws_sqs_queue.service_dlq : name => q.name },
  )
}

# A job (or event) waiting this long means its pool is not serving: capacity, image or crash loop.
resource "aws_cloudwatch_metric_alarm" "oldest_message" {
  for_each            = local.all_queues
  alarm_name          = "${var.prefix}-${each.key}-oldest-message"
  alarm_description   = "The oldest message of ${each.value} has waited more than ${var.alarm_oldest_message_seconds} s."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = each.value }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 3
  threshold           = var.alarm_oldest_message_seconds
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = local.tags
}

# Anything dead-lettered was received max_receives times without being settled: look at it.
resource "aws_cloudwatch_metric_alarm" "dlq_depth" {
  for_each            = local.all_dlqs
  alarm_name          = "${var.prefix}-${each.key}-dead-letters"
  alarm_description   = "${each.value} holds messages (received ${var.max_receives} times without being settled)."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = each.value }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = local.tags
}

# A 500 is always a bug (DESIGN.md); the load balancer's own 5xx (no healthy target) count too.
resource "aws_cloudwatch_metric_alarm" "api_5xx" {
  alarm_name          = "${var.prefix}-api-5xx"
  alarm_description   = "The API answered more than ${var.alarm_5xx_per_minute} 5xx per minute for 3 minutes."
  evaluation_periods  = 3
  threshold           = var.alarm_5xx_per_minute
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  metric_query {
    id          = "total"
    expression  = "FILL(target, 0) + FILL(elb, 0)"
    label       = "5xx per minute"
    return_data = true
  }
  metric_query {
    id = "target"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_Target_5XX_Count"
      dimensions  = { LoadBalancer = aws_lb.api.arn_suffix }
      stat        = "Sum"
      period      = 60
    }
  }
  metric_query {
    id = "elb"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_ELB_5XX_Count"
      dimensions  = { LoadBalancer = aws_lb.api.arn_suffix }
      stat        = "Sum"
      period      = 60
    }
  }
  tags = local.tags
}

# Webhook attempts and their outcome, from the senders' JSON logs: Celery logs each finished
# `webhooks.deliver` task with its return value (integrations/webhooks/services/delivery.py:
# succeeded, retry, failed or gone).
locals {
  webhook_metric_namespace = "sdsaas/webhooks"
  webhook_outcomes = {
    WebhookAttempts = "{ $.logger = \"celery.app.trace\" && $.message = \"*webhooks.deliver*succeeded in*\" }"
    WebhookRetries  = "{ $.logger = \"celery.app.trace\" && $.message = \"*webhooks.deliver*succeeded in*'retry'\" }"
    WebhookFailures = "{ $.logger = \"celery.app.trace\" && $.message = \"*webhooks.deliver*succeeded in*'failed'\" }"
  }
}

resource "aws_cloudwatch_log_metric_filter" "webhooks" {
  for_each       = local.webhook_outcomes
  name           = "${var.prefix}-${each.key}"
  log_group_name = aws_cloudwatch_log_group.service["webhooks"].name
  pattern        = each.value
  metric_transformation {
    name          = each.key
    namespace     = local.webhook_metric_namespace
    value         = "1"
    default_value = "0"
    dimensions    = {}
  }
}

resource "aws_cloudwatch_metric_alarm" "webhook_failure_rate" {
  alarm_name          = "${var.prefix}-webhook-failure-rate"
  alarm_description   = "More than ${var.alarm_webhook_failure_rate * 100}% of webhook delivery attempts failed over 15 minutes (at least 20 attempts)."
  evaluation_periods  = 1
  threshold           = var.alarm_webhook_failure_rate
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  metric_query {
    id          = "rate"
    expression  = "IF(attempts >= 20, (retries + failures) / attempts, 0)"
    label       = "Failed share of webhook attempts"
    return_data = true
  }
  dynamic "metric_query" {
    for_each = { attempts = "WebhookAttempts", retries = "WebhookRetries", failures = "WebhookFailures" }
    content {
      id = metric_query.key
      metric {
        namespace   = local.webhook_metric_namespace
        metric_name = metric_query.value
        stat        = "Sum"
        period      = 900
      }
    }
  }
  depends_on = [aws_cloudwatch_log_metric_filter.webhooks]
  tags       = local.tags
}

resource "aws_cloudwatch_dashboard" "this" {
  dashboard_name = var.prefix
  dashboard_body = jsonencode({
    widgets = concat(
      [
        {
          type = "metric", width = 12, height = 6
          properties = {
            title = "GPU pools: DesiredWorkers (published) vs running tasks", region = local.region, stat = "Maximum", period = 60
            metrics = flatten([for slug in var.model_slugs : [
              [var.scaling_metric_namespace, "DesiredWorkers", "Deployment", var.prefix, "Model", slug, { label = "${slug} desired" }],
              ["ECS/ContainerInsights", "RunningTaskCount", "ClusterName", aws_ecs_cluster.this.name, "ServiceName", "${var.prefix}-gpu-${slug}", { label = "${slug} running" }],
            ]])
          }
        },
        {
          type = "metric", width = 12, height = 6
          properties = {
            title = "Model queues: visible, in flight, unpublished", region = local.region, stat = "Maximum", period = 60
            metrics = flatten([for slug in var.model_slugs : [
              [var.scaling_metric_namespace, "VisibleMessages", "Deployment", var.prefix, "Model", slug, { label = "${slug} visible" }],
              [var.scaling_metric_namespace, "InFlightMessages", "Deployment", var.prefix, "Model", slug, { label = "${slug} in flight" }],
              [var.scaling_metric_namespace, "UnpublishedJobs", "Deployment", var.prefix, "Model", slug, { label = "${slug} unpublished" }],
            ]])
          }
        },
        {
          type = "metric", width = 12, height = 6
          properties = {
            title   = "Oldest message age (s)", region = local.region, stat = "Maximum", period = 60
            metrics = [for key, name in local.all_queues : ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", name]]
          }
        },
        {
          type = "metric", width = 12, height = 6
          properties = {
            title   = "Dead-letter queues", region = local.region, stat = "Maximum", period = 300
            metrics = [for key, name in local.all_dlqs : ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", name]]
          }
        },
        {
          type = "metric", width = 12, height = 6
          properties = {
            title = "API", region = local.region, period = 60
            metrics = [
              ["AWS/ApplicationELB", "RequestCount", "LoadBalancer", aws_lb.api.arn_suffix, { stat = "Sum" }],
              ["AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", "LoadBalancer", aws_lb.api.arn_suffix, { stat = "Sum" }],
              ["AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", "LoadBalancer", aws_lb.api.arn_suffix, { stat = "Sum" }],
              ["AWS/ApplicationELB", "TargetResponseTime", "LoadBalancer", aws_lb.api.arn_suffix, { stat = "p99" }],
            ]
          }
        },
        {
          type = "metric", width = 12, height = 6
          properties = {
            title   = "Webhook attempts", region = local.region, stat = "Sum", period = 300
            metrics = [for name in keys(local.webhook_outcomes) : [local.webhook_metric_namespace, name]]
          }
        },
      ],
    )
  })
}
