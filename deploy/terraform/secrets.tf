# Secrets Manager: the values the services read at start (ECS injects them as environment
# variables). Values are generated here through ephemeral resources and write-only attributes, so
# the Terraform state never holds one. Who may read which secret is in iam.tf: the GPU workers get
# their own Django key and nothing else (no database, no Fernet keys).

locals {
  # Secret -> the control-plane environment variable it becomes.
  control_plane_secrets = {
    DATABASE_URL               = aws_secretsmanager_secret.database_url.arn
    SDSAAS_SECRET_KEY          = aws_secretsmanager_secret.django_secret_key.arn
    SDSAAS_WEBHOOK_SECRET_KEYS = aws_secretsmanager_secret.webhook_secret_keys.arn
    SDSAAS_DISCORD_TOKEN_KEYS  = aws_secretsmanager_secret.discord_token_keys.arn
    SDSAAS_METRICS_TOKEN       = aws_secretsmanager_secret.metrics_token.arn
  }
  # Django needs a SECRET_KEY in every role; the GPU worker signs nothing with it, so it gets one
  # of its own rather than the API's.
  gpu_secrets = {
    SDSAAS_SECRET_KEY = aws_secretsmanager_secret.gpu_secret_key.arn
  }
}

resource "aws_secretsmanager_secret" "database_url" {
  #checkov:skip=CKV2_AWS_57:The password is rotated by raising secrets_version and applying (database and URL change together); a rotation Lambda would change the password under running services whose DATABASE_URL is read once at start.
  name        = "${var.prefix}/database-url"
  description = "DATABASE_URL of the sdsaas API and control-plane workers"
  kms_key_id  = aws_kms_key.this.arn
  tags        = local.tags
}

resource "aws_secretsmanager_secret_version" "database_url" {
  secret_id                = aws_secretsmanager_secret.database_url.id
  secret_string_wo         = "postgres://${aws_db_instance.this.username}:${ephemeral.aws_secretsmanager_random_password.db.random_password}@${aws_db_instance.this.address}:${aws_db_instance.this.port}/${aws_db_instance.this.db_name}?sslmode=require"
  secret_string_wo_version = var.secrets_version
}

ephemeral "aws_secretsmanager_random_password" "django" {
  password_length = 64
}

resource "aws_secretsmanager_secret" "django_secret_key" {
  #checkov:skip=CKV2_AWS_57:Rotated by raising secrets_version (Django's SECRET_KEY signs sessions of the admin only; a rotation logs them out). A rotation Lambda adds nothing.
  name        = "${var.prefix}/django-secret-key"
  description = "SDSAAS_SECRET_KEY of the sdsaas API and control-plane workers"
  kms_key_id  = aws_kms_key.this.arn
  tags        = local.tags
}

resource "aws_secretsmanager_secret_version" "django_secret_key" {
  secret_id                = aws_secretsmanager_secret.django_secret_key.id
  secret_string_wo         = ephemeral.aws_secretsmanager_random_password.django.random_password
  secret_string_wo_version = var.secrets_version
}

ephemeral "aws_secretsmanager_random_password" "gpu_django" {
  password_length = 64
}

resource "aws_secretsmanager_secret" "gpu_secret_key" {
  #checkov:skip=CKV2_AWS_57:The GPU workers sign nothing with it (Django requires one in every role); rotated by raising secrets_version.
  name        = "${var.prefix}/gpu-django-secret-key"
  description = "SDSAAS_SECRET_KEY of the sdsaas GPU workers (their own, not the API's)"
  kms_key_id  = aws_kms_key.this.arn
  tags        = local.tags
}

resource "aws_secretsmanager_secret_version" "gpu_secret_key" {
  secret_id                = aws_secretsmanager_secret.gpu_secret_key.id
  secret_string_wo         = ephemeral.aws_secretsmanager_random_password.gpu_django.random_password
  secret_string_wo_version = var.secrets_version
}

# Fernet keys: 32 random bytes in URL-safe base64 (44 characters, one "=" of padding). 43
# characters drawn from letters and digits (a subset of that alphabet, about 256 bits) and the
# padding decode to 32 bytes. Written once (version 1): they encrypt the stored webhook signing
# secrets and Discord bot tokens, and a new key alone would make those unreadable. Rotate by
# putting "new,old" into the secret and re-encrypting (README, "Rotating the Fernet keys").
ephemeral "aws_secretsmanager_random_password" "fernet" {
  for_each            = toset(["webhook", "discord"])
  password_length     = 43
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "webhook_secret_keys" {
  #checkov:skip=CKV2_AWS_57:A Fernet key list is rotated by prepending a new key and re-encrypting the stored secrets (README); an automatic rotation would make them unreadable.
  name        = "${var.prefix}/webhook-secret-keys"
  description = "SDSAAS_WEBHOOK_SECRET_KEYS: Fernet keys of the webhook signing secrets, newest first"
  kms_key_id  = aws_kms_key.this.arn
  tags        = local.tags
}

resource "aws_secretsmanager_secret_version" "webhook_secret_keys" {
  secret_id                = aws_secretsmanager_secret.webhook_secret_keys.id
  secret_string_wo         = "${ephemeral.aws_secretsmanager_random_password.fernet["webhook"].random_password}="
  secret_string_wo_version = 1
}

resource "aws_secretsmanager_secret" "discord_token_keys" {
  #checkov:skip=CKV2_AWS_57:A Fernet key list is rotated by prepending a new key and running manage.py discord_tokens_reencrypt (README); an automatic rotation would make the stored tokens unreadable.
  name        = "${var.prefix}/discord-token-keys"
  description = "SDSAAS_DISCORD_TOKEN_KEYS: Fernet keys of the stored Discord bot tokens, newest first"
  kms_key_id  = aws_kms_key.this.arn
  tags        = local.tags
}

resource "aws_secretsmanager_secret_version" "discord_token_keys" {
  secret_id                = aws_secretsmanager_secret.discord_token_keys.id
  secret_string_wo         = "${ephemeral.aws_secretsmanager_random_password.fernet["discord"].random_password}="
  secret_string_wo_version = 1
}

# The bearer token Prometheus scrapes the API's /metrics with (without one it answers 404).
ephemeral "aws_secretsmanager_random_password" "metrics_token" {
  password_length     = 48
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "metrics_token" {
  #checkov:skip=CKV2_AWS_57:Rotated by raising secrets_version and giving the scraper the new value; a rotation Lambda would change it under running API tasks that read it once at start.
  name        = "${var.prefix}/metrics-token"
  description = "SDSAAS_METRICS_TOKEN of the sdsaas API: the bearer token of GET /metrics"
  kms_key_id  = aws_kms_key.this.arn
  tags        = local.tags
}

resource "aws_secretsmanager_secret_version" "metrics_token" {
  secret_id                = aws_secretsmanager_secret.metrics_token.id
  secret_string_wo         = ephemeral.aws_secretsmanager_random_password.metrics_token.random_password
  secret_string_wo_version = var.secrets_version
}
