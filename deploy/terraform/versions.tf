# A module: the caller configures the AWS provider (region, credentials); see examples/minimal.
terraform {
  # 1.11: write-only attributes, so that no generated secret is ever kept in the state.
  required_version = ">= 1.11"
  required_providers {
    # 5.90: ephemeral random passwords and the write-only secret_string_wo / password_wo.
    aws = { source = "hashicorp/aws", version = ">= 5.90, < 6.0" }
  }
}

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  tags       = merge({ "sdsaas:deployment" = var.prefix }, var.tags)
}
