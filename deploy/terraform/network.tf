# The network: a VPC created here (vpc_id = null) or an existing one. The load balancer sits in the
# public subnets; everything else (Fargate tasks, GPU instances, the database) in private ones.

locals {
  create_vpc         = var.vpc_id == null
  vpc_id             = local.create_vpc ? aws_vpc.this[0].id : var.vpc_id
  public_subnet_ids  = local.create_vpc ? aws_subnet.public[*].id : var.public_subnet_ids
  private_subnet_ids = local.create_vpc ? aws_subnet.private[*].id : var.private_subnet_ids
  azs                = slice(data.aws_availability_zones.available.names, 0, var.availability_zone_count)
  nat_count          = local.create_vpc ? (var.single_nat_gateway ? 1 : var.availability_zone_count) : 0
}

data "aws_availability_zones" "available" {
  state = "available"
}

resource "aws_vpc" "this" {
  count                = local.create_vpc ? 1 : 0
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(local.tags, { Name = var.prefix })
}

# Nothing may use the default security group: every resource here names its own.
resource "aws_default_security_group" "this" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  tags   = merge(local.tags, { Name = "${var.prefix}-default-unused" })
}

resource "aws_flow_log" "this" {
  count                = local.create_vpc ? 1 : 0
  vpc_id               = aws_vpc.this[0].id
  traffic_type         = "REJECT"
  log_destination_type = "cloud-watch-logs"
  log_destination      = aws_cloudwatch_log_group.flow[0].arn
  iam_role_arn         = aws_iam_role.flow_logs[0].arn
  tags                 = local.tags
}

resource "aws_cloudwatch_log_group" "flow" {
  count             = local.create_vpc ? 1 : 0
  name              = "/sdsaas/${var.prefix}/vpc-flow"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_iam_role" "flow_logs" {
  count              = local.create_vpc ? 1 : 0
  name               = "${var.prefix}-vpc-flow-logs"
  assume_role_policy = data.aws_iam_policy_document.flow_logs_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "flow_logs_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "flow_logs" {
  count = local.create_vpc ? 1 : 0
  name  = "write-flow-log"
  role  = aws_iam_role.flow_logs[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
      Resource = "${aws_cloudwatch_log_group.flow[0].arn}:*"
    }]
  })
}

resource "aws_internet_gateway" "this" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  tags   = merge(local.tags, { Name = var.prefix })
}

resource "aws_subnet" "public" {
  count             = local.create_vpc ? var.availability_zone_count : 0
  vpc_id            = aws_vpc.this[0].id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 8, count.index)
  # Only the load balancer and the NAT gateways live here; neither needs an automatic public IP.
  map_public_ip_on_launch = false
  tags                    = merge(local.tags, { Name = "${var.prefix}-public-${local.azs[count.index]}" })
}

resource "aws_subnet" "private" {
  count             = local.create_vpc ? var.availability_zone_count : 0
  vpc_id            = aws_vpc.this[0].id
  availability_zone = local.azs[count.index]
  # /20s: awsvpc tasks take one address each, and a GPU burst can be large.
  cidr_block = cidrsubnet(var.vpc_cidr, 4, count.index + 1)
  tags       = merge(local.tags, { Name = "${var.prefix}-private-${local.azs[count.index]}" })
}

resource "aws_route_table" "public" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this[0].id
  }
  tags = merge(local.tags, { Name = "${var.prefix}-public" })
}

resource "aws_route_table_association" "public" {
  count          = local.create_vpc ? var.availability_zone_count : 0
  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public[0].id
}

resource "aws_eip" "nat" {
  #checkov:skip=CKV2_AWS_19:The address belongs to aws_nat_gateway.this (allocation_id), not to an instance; this check knows only instance attachments.
  count  = local.nat_count
  domain = "vpc"
  tags   = merge(local.tags, { Name = "${var.prefix}-nat-${count.index}" })
}

resource "aws_nat_gateway" "this" {
  count         = local.nat_count
  allocation_id = aws_eip.nat[count.index].id
  subnet_id     = aws_subnet.public[count.index].id
  tags          = merge(local.tags, { Name = "${var.prefix}-${count.index}" })
  depends_on    = [aws_internet_gateway.this]
}

resource "aws_route_table" "private" {
  count  = local.create_vpc ? var.availability_zone_count : 0
  vpc_id = aws_vpc.this[0].id
  route {
    cidr_block     = "0.0.0.0/0"
    nat_gateway_id = aws_nat_gateway.this[var.single_nat_gateway ? 0 : count.index].id
  }
  tags = merge(local.tags, { Name = "${var.prefix}-private-${count.index}" })
}

resource "aws_route_table_association" "private" {
  count          = local.create_vpc ? var.availability_zone_count : 0
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private[count.index].id
}

# S3 traffic (model weights, outputs) stays off the NAT gateways: cheaper and faster.
resource "aws_vpc_endpoint" "s3" {
  count             = local.create_vpc ? 1 : 0
  vpc_id            = aws_vpc.this[0].id
  service_name      = "com.amazonaws.${local.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = aws_route_table.private[*].id
  tags              = merge(local.tags, { Name = "${var.prefix}-s3" })
}

# --- Security groups: the load balancer reaches the API; the services reach the database. ------

resource "aws_security_group" "alb" {
  name        = "${var.prefix}-alb"
  description = "sdsaas load balancer: HTTPS (and HTTP, redirected) from clients"
  vpc_id      = local.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each          = toset(var.alb_ingress_cidrs)
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from clients"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  for_each          = toset(var.alb_ingress_cidrs)
  security_group_id = aws_security_group.alb.id
  description       = "HTTP from clients, answered with a redirect to HTTPS"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}

resource "aws_vpc_security_group_egress_rule" "alb_to_api" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the API tasks"
  referenced_security_group_id = aws_security_group.api.id
  ip_protocol                  = "tcp"
  from_port                    = 8000
  to_port                      = 8000
}

resource "aws_security_group" "api" {
  #checkov:skip=CKV2_AWS_5:Attached to the API tasks by aws_ecs_service.control_plane's network_configuration, a link this checkov release does not follow.
  name        = "${var.prefix}-api"
  description = "sdsaas API tasks: port 8000 from the load balancer"
  vpc_id      = local.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "api_from_alb" {
  security_group_id            = aws_security_group.api.id
  description                  = "From the load balancer"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = 8000
  to_port                      = 8000
}

# Workers (control, senders, scheduler) take no inbound traffic at all.
resource "aws_security_group" "workers" {
  #checkov:skip=CKV2_AWS_5:Attached to the worker tasks by aws_ecs_service.control_plane's network_configuration, a link this checkov release does not follow.
  name        = "${var.prefix}-workers"
  description = "sdsaas control worker, senders and scheduler: no inbound"
  vpc_id      = local.vpc_id
  tags        = local.tags
}

resource "aws_security_group" "gpu" {
  name        = "${var.prefix}-gpu"
  description = "sdsaas GPU instances and tasks: no inbound"
  vpc_id      = local.vpc_id
  tags        = local.tags
}

# Outbound HTTPS: AWS APIs (SQS, S3, CloudWatch, ECS), the image registry, and for the senders the
# tenants' webhook URLs and Discord. The webhook sender's SSRF guard checks every address.
resource "aws_vpc_security_group_egress_rule" "https_out" {
  for_each = {
    api     = aws_security_group.api.id
    workers = aws_security_group.workers.id
    gpu     = aws_security_group.gpu.id
  }
  security_group_id = each.value
  description       = "HTTPS to AWS APIs, registries, webhook receivers and Discord"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "to_db" {
  for_each = {
    api     = aws_security_group.api.id
    workers = aws_security_group.workers.id
  }
  security_group_id            = each.value
  description                  = "Postgres"
  referenced_security_group_id = aws_security_group.db.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

# The GPU security group has no rule to the database: GPU workers hold no database credentials,
# and cannot reach it either.
resource "aws_security_group" "db" {
  name        = "${var.prefix}-db"
  description = "sdsaas Postgres: from the API and the workers, never from GPU workers"
  vpc_id      = local.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "db" {
  for_each = {
    api     = aws_security_group.api.id
    workers = aws_security_group.workers.id
  }
  security_group_id            = aws_security_group.db.id
  description                  = "Postgres from ${each.key}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}
