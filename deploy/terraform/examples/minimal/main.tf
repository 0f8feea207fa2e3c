# A first deployment with two models: a created VPC, spot GPU instances, alarms by mail.
# terraform init && terraform apply (see ../../README.md for the whole walk).

terraform {
  required_version = ">= 1.11"
  required_providers {
    aws = { source = "hashicorp/aws", version = ">= 5.90, < 6.0" }
  }
}

provider "aws" {
  region = "us-east-1"
}

variable "start_services" {
  description = "false for the first apply: the database is migrated before the control plane starts (../../README.md)."
  type        = bool
  default     = true
}

module "sdsaas" {
  source = "../.."

  prefix      = "sdsaas-prod"
  model_slugs = ["sd15", "sdxl"]
  bucket_name = "example-sdsaas-prod-data"

  domain_name     = "api.example.com"
  certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"

  web_image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sdsaas-web:1.0.0"
  gpu_image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sdsaas-gpu:1.0.0"

  alarm_email    = "oncall@example.com"
  start_services = var.start_services
}

output "alb_dns_name" {
  description = "Point api.example.com at this."
  value       = module.sdsaas.alb_dns_name
}

output "migrate_command" {
  description = "Run once after the first apply, and after each release with migrations."
  value       = module.sdsaas.migrate_command
}
