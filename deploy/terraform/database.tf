# RDS Postgres: the source of truth for tenants, the catalog and job state. Reached from the API
# and the control-plane workers only (security groups in network.tf); GPU workers never.

resource "aws_db_subnet_group" "this" {
  name       = var.prefix
  subnet_ids = local.private_subnet_ids
  tags       = local.tags
}

resource "aws_db_parameter_group" "this" {
  name_prefix = "${var.prefix}-pg${var.db_engine_version}-"
  family      = "postgres${var.db_engine_version}"
  # Clients must use TLS (DATABASE_URL asks for sslmode=require as well).
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
  # Slow statements to the log, for the row-lock paths (admission, fencing) under load.
  parameter {
    name  = "log_min_duration_statement"
    value = "500"
  }
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
  lifecycle {
    create_before_destroy = true
  }
  tags = local.tags
}

# A new password on each raise of secrets_version: generated for the run and written to the
# database and to the DATABASE_URL secret without ever being stored in the Terraform state.
ephemeral "aws_secretsmanager_random_password" "db" {
  password_length     = 40
  exclude_punctuation = true
}

resource "aws_db_instance" "this" {
  identifier     = var.prefix
  engine         = "postgres"
  engine_version = var.db_engine_version
  instance_class = var.db_instance_class
  db_name        = "sdsaas"
  username       = "sdsaas"

  password_wo         = ephemeral.aws_secretsmanager_random_password.db.random_password
  password_wo_version = var.secrets_version

  allocated_storage     = var.db_allocated_storage_gib
  max_allocated_storage = var.db_allocated_storage_gib * 5
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.this.arn

  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [aws_security_group.db.id]
  parameter_group_name   = aws_db_parameter_group.this.name
  publicly_accessible    = false
  multi_az               = var.db_multi_az

  backup_retention_period   = var.db_backup_retention_days
  copy_tags_to_snapshot     = true
  deletion_protection       = var.db_deletion_protection
  skip_final_snapshot       = false
  final_snapshot_identifier = "${var.prefix}-final"
  # Minor versions carry security fixes; they apply in the maintenance window.
  auto_minor_version_upgrade = true

  # The services log in with the password of DATABASE_URL; IAM authentication is enabled so that
  # operators can connect with short-lived tokens instead of that password.
  iam_database_authentication_enabled = true

  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]
  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.this.arn
  performance_insights_retention_period = 7
  monitoring_interval                   = 60
  monitoring_role_arn                   = aws_iam_role.rds_monitoring.arn

  tags = local.tags
}

resource "aws_iam_role" "rds_monitoring" {
  name               = "${var.prefix}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.rds_monitoring_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "rds_monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}
