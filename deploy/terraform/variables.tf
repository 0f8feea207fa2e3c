# --- Names --------------------------------------------------------------------------------------

variable "prefix" {
  description = "Deployment name: SDSAAS_SQS_QUEUE_PREFIX of the services and the prefix of every resource name (queues <prefix>-control, <prefix>-model-<slug>, <prefix>-webhooks, <prefix>-discord)."
  type        = string
  default     = "sdsaas"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.prefix))
    error_message = "prefix: 2 to 21 lower-case letters, digits and hyphens (it ends up in ALB and target group names, 32 characters at most)."
  }
}

variable "model_slugs" {
  description = "Base model slugs of the catalog (jobs.BaseModel.slug). Each gets a queue with its dead-letter queue, a GPU ECS service <prefix>-gpu-<slug> and its scaling policy. Seed the catalog with the same slugs."
  type        = set(string)
}

variable "tags" {
  description = "Tags added to every resource that takes tags."
  type        = map(string)
  default     = {}
}

# --- Queue timing ---------------------------------------------------------------------------------

# The four timings below must satisfy the rule of sdsaas.settings.check_visibility_timing, which
# the services apply at start-up; tests/deploy/test_terraform.py checks these defaults with it.
variable "visibility_timeout_seconds" {
  description = "Base visibility timeout of every queue (SDSAAS_SQS_VISIBILITY_TIMEOUT): a lost worker's job is delivered again within about this long; running jobs are extended by the heartbeat."
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

variable "gpu_stop_grace_seconds" {
  description = "SDSAAS_GPU_STOP_GRACE_S: how long a stopping GPU worker lets its job finish before handing it back. The container's stopTimeout is this + 10 s (ECS allows at most 120)."
  type        = number
  default     = 25
  validation {
    condition     = var.gpu_stop_grace_seconds >= 0 && var.gpu_stop_grace_seconds <= 110
    error_message = "gpu_stop_grace_seconds: 0 to 110 (ECS stops a container at most 120 s after SIGTERM)."
  }
}

variable "max_receives" {
  description = "Deliveries of one message before it is dead-lettered (maxReceiveCount of every queue's redrive policy)."
  type        = number
  default     = 3
}

variable "dead_letter_retention_seconds" {
  description = "How long dead-lettered messages are kept for inspection and redrive (SQS allows 14 days at most)."
  type        = number
  default     = 1209600
}

# --- Storage --------------------------------------------------------------------------------------

variable "bucket_name" {
  description = "SDSAAS_S3_BUCKET: uploads and generated images under tenants/, model weights under models/."
  type        = string
}

variable "output_expiration_days" {
  description = "Objects under tenants/ (uploads, generated images, cancel markers) are deleted this many days after they were written. Model weights under models/ never expire."
  type        = number
  default     = 30
}

variable "model_weights_s3_arns" {
  description = "Extra S3 object ARNs (e.g. arn:aws:s3:::other-bucket/weights/*) the GPU workers may read weights from, besides models/* of the bucket. Their buckets must grant the GPU task role too when in another account."
  type        = list(string)
  default     = []
}

# --- Network --------------------------------------------------------------------------------------

variable "vpc_id" {
  description = "An existing VPC to deploy into; null creates one (with public subnets for the load balancer, private subnets with NAT for the services and the database)."
  type        = string
  default     = null
}

variable "public_subnet_ids" {
  description = "With vpc_id: the public subnets of the load balancer (two availability zones at least)."
  type        = list(string)
  default     = []
}

variable "private_subnet_ids" {
  description = "With vpc_id: the private subnets of the services, the GPU instances and the database; they need a route to the AWS APIs (NAT or VPC endpoints) and the image registry."
  type        = list(string)
  default     = []
}

variable "vpc_cidr" {
  description = "CIDR of the VPC created when vpc_id is null."
  type        = string
  default     = "10.40.0.0/16"
}

variable "availability_zone_count" {
  description = "Availability zones of the created VPC (one public and one private subnet each)."
  type        = number
  default     = 2
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all private subnets of the created VPC (cheaper; the private subnets lose egress if its zone fails) instead of one per zone."
  type        = bool
  default     = false
}

# --- API and images -------------------------------------------------------------------------------

variable "domain_name" {
  description = "Host name of the API (SDSAAS_ALLOWED_HOSTS; https://<domain_name> is SDSAAS_PUBLIC_BASE_URL). Point it (CNAME or alias) at the alb_dns_name output."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate ARN for domain_name, in the deployment's region; the HTTPS listener serves it."
  type        = string
}

variable "web_image" {
  description = "Image URI of the web/CPU image (requirements/web.txt, no torch): the API, the control worker, the webhook and Discord senders, the scheduler."
  type        = string
}

variable "gpu_image" {
  description = "Image URI of the GPU worker image (requirements/gpu.txt, CUDA)."
  type        = string
}

variable "alb_ingress_cidrs" {
  description = "Client CIDRs allowed to reach the load balancer."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "alb_deletion_protection" {
  description = "Deletion protection of the load balancer; set false and apply before `terraform destroy`."
  type        = bool
  default     = true
}

variable "start_services" {
  description = "false keeps the API, control worker, senders and scheduler at 0 tasks (the first apply, before the migration); true runs them at their counts."
  type        = bool
  default     = true
}

variable "api_desired_count" {
  description = "API tasks (gunicorn) behind the load balancer."
  type        = number
  default     = 2
}

variable "api_cpu" {
  description = "Fargate CPU units of an API task."
  type        = number
  default     = 1024
}

variable "api_memory" {
  description = "Fargate memory (MiB) of an API task."
  type        = number
  default     = 2048
}

variable "api_workers" {
  description = "SDSAAS_API_WORKERS: gunicorn worker processes per API task."
  type        = number
  default     = 3
}

variable "control_desired_count" {
  description = "Control worker tasks (job events, admission, metering) on the <prefix>-control queue."
  type        = number
  default     = 2
}

variable "sender_desired_count" {
  description = "Tasks of each sender (webhooks, Discord) on their own queues."
  type        = number
  default     = 1
}

variable "worker_cpu" {
  description = "Fargate CPU units of a control worker, sender or scheduler task."
  type        = number
  default     = 512
}

variable "worker_memory" {
  description = "Fargate memory (MiB) of a control worker, sender or scheduler task."
  type        = number
  default     = 1024
}

variable "extra_environment" {
  description = "More SDSAAS_* settings for the API, control worker, senders and scheduler (not secrets: those go to Secrets Manager)."
  type        = map(string)
  default     = {}
}

# --- GPU capacity ---------------------------------------------------------------------------------

variable "gpu_instance_types" {
  description = "Instance types of the GPU pool, one GPU each, in order of preference (mixed instances: spot picks by capacity)."
  type        = list(string)
  default     = ["g5.xlarge", "g6.xlarge", "g4dn.xlarge"]
}

variable "gpu_on_demand_base_capacity" {
  description = "On-demand GPU instances kept below the spot ones (they are not interrupted; with 0 every GPU instance is spot)."
  type        = number
  default     = 0
}

variable "gpu_on_demand_percentage_above_base" {
  description = "Percentage of on-demand instances above the base (0: all spot)."
  type        = number
  default     = 0
}

variable "gpu_max_instances" {
  description = "Upper bound of the GPU Auto Scaling group (all models together)."
  type        = number
  default     = 20
}

variable "gpu_max_workers" {
  description = "Upper bound of each model's GPU service (max capacity of its scaling target); keep SDSAAS_SCALING_MAX_WORKERS the same."
  type        = number
  default     = 20
}

variable "gpu_task_cpu" {
  description = "CPU units reserved by a GPU task (an xlarge instance has 4096)."
  type        = number
  default     = 3072
}

variable "gpu_task_memory" {
  description = "Memory (MiB) reserved by a GPU task; must fit the smallest gpu_instance_types after the ECS agent's share."
  type        = number
  default     = 14336
}

variable "gpu_root_volume_gib" {
  description = "Root volume of a GPU instance: the GPU image and the model cache (SDSAAS_MODEL_CACHE_DIR)."
  type        = number
  default     = 150
}

variable "gpu_ami_ssm_parameter" {
  description = "SSM parameter holding the ECS GPU-optimized AMI ID."
  type        = string
  default     = "/aws/service/ecs/optimized-ami/amazon-linux-2/gpu/recommended/image_id"
}

variable "gpu_extra_environment" {
  description = "More SDSAAS_GPU_* settings for the GPU workers (e.g. SDSAAS_GPU_OPTIMIZATIONS)."
  type        = map(string)
  default     = {}
}

variable "scaling_acceptable_wait_seconds" {
  description = "SDSAAS_SCALING_ACCEPTABLE_WAIT_S: the queue wait each model's pool is sized for (target backlog per worker = this / measured seconds per job)."
  type        = number
  default     = 40
}

variable "scaling_scale_in_delay_seconds" {
  description = "SDSAAS_SCALING_SCALE_IN_DELAY_S: the workers above a pool's need go once the need stayed below its size this long."
  type        = number
  default     = 60
}

variable "scaling_keep_alive_seconds" {
  description = "SDSAAS_SCALING_KEEP_ALIVE_S: a pool keeps one warm worker until it had no work for this long, then goes to zero."
  type        = number
  default     = 600
}

variable "scaling_metric_namespace" {
  description = "SDSAAS_SCALING_METRIC_NAMESPACE: CloudWatch namespace of the DesiredWorkers metric the scheduler publishes and the GPU services scale on."
  type        = string
  default     = "sdsaas/scaling"
}

# --- Database -------------------------------------------------------------------------------------

variable "db_instance_class" {
  description = "RDS instance class of the Postgres database."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_engine_version" {
  description = "Postgres major version of the database."
  type        = string
  default     = "16"
}

variable "db_allocated_storage_gib" {
  description = "Initial storage of the database (GiB); it grows up to 5 times this on its own."
  type        = number
  default     = 50
}

variable "db_multi_az" {
  description = "A standby in a second availability zone."
  type        = bool
  default     = true
}

variable "db_deletion_protection" {
  description = "Deletion protection of the database; set false and apply before `terraform destroy`."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery)."
  type        = number
  default     = 14
}

variable "secrets_version" {
  description = "Raise by one to generate new values for the database password (DATABASE_URL) and the Django secret keys at the next apply. The Fernet keys (webhook and Discord) are not regenerated: they encrypt stored secrets; rotate them as the README says."
  type        = number
  default     = 1
}

# --- Operations -----------------------------------------------------------------------------------

variable "log_retention_days" {
  description = "Retention of the services' CloudWatch log groups."
  type        = number
  default     = 90
}

variable "alarm_email" {
  description = "An address subscribed to the alarm topic (confirm the subscription mail); null subscribes nobody."
  type        = string
  default     = null
}

variable "alarm_oldest_message_seconds" {
  description = "Alarm when the oldest message of a model queue has waited longer than this."
  type        = number
  default     = 600
}

variable "alarm_5xx_per_minute" {
  description = "Alarm when the API answers more 5xx than this per minute (three minutes in a row)."
  type        = number
  default     = 5
}

variable "alarm_webhook_failure_rate" {
  description = "Alarm when more than this fraction of webhook delivery attempts fail over 15 minutes (with at least 20 attempts)."
  type        = number
  default     = 0.25
}
