variable "subscription_id" {
  description = "Azure subscription to deploy into."
  type        = string
}

variable "location" {
  description = "Azure region."
  type        = string
  default     = "westeurope"
}

variable "name" {
  description = "Short name used in every resource name (letters and digits)."
  type        = string
  default     = "pgwi"
  validation {
    condition     = can(regex("^[a-z0-9]{3,12}$", var.name))
    error_message = "name must be 3-12 lowercase letters or digits."
  }
}

variable "vnet_cidr" {
  description = "Address space of the virtual network."
  type        = string
  default     = "10.0.0.0/22"
}

variable "aks_node_size" {
  description = "VM size of the AKS system node pool (one with a temporary disk: the OS disk is ephemeral and lives there)."
  type        = string
  default     = "Standard_D2ds_v5"
}

variable "aks_node_count" {
  description = "Nodes in the AKS system pool."
  type        = number
  default     = 1
}

variable "aks_api_authorized_ip_ranges" {
  description = "CIDRs allowed to reach the AKS API server (your workstation, CI). Required: an empty list is refused unless aks_api_open_to_internet is true."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for r in var.aks_api_authorized_ip_ranges : can(cidrhost(r, 0)) && r != "0.0.0.0/0"])
    error_message = "aks_api_authorized_ip_ranges takes IPv4 CIDRs such as 203.0.113.10/32 (not 0.0.0.0/0: set aks_api_open_to_internet = true for that)."
  }
}

variable "aks_api_open_to_internet" {
  description = "Let every address reach the AKS API server (Entra ID still authenticates every caller). Only with an empty aks_api_authorized_ip_ranges."
  type        = bool
  default     = false
}

variable "postgres_sku" {
  description = "SKU of the PostgreSQL Flexible Server."
  type        = string
  default     = "B_Standard_B1ms"
}

variable "postgres_geo_redundant_backup" {
  description = "Keep the server's backups in the region's pair too. Regions without a pair (or without the feature) need false; fixed at creation (changing it replaces the server)."
  type        = bool
  default     = true
}

variable "postgres_zone" {
  description = "Availability zone of the PostgreSQL server: \"1\", \"2\" or \"3\"; \"\" lets Azure choose (regions without zones)."
  type        = string
  default     = "1"
  validation {
    condition     = contains(["", "1", "2", "3"], var.postgres_zone)
    error_message = "postgres_zone must be \"1\", \"2\", \"3\", or \"\" for no zone."
  }
}

variable "postgres_database" {
  description = "The application database (created by `pgwi admin bootstrap`)."
  type        = string
  default     = "app"
}

variable "k8s_namespace" {
  description = "Namespace of the CronJob. Reaches the manifests through terraform output and deploy/render-values.sh."
  type        = string
  default     = "app"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.k8s_namespace))
    error_message = "k8s_namespace must be a DNS label (lowercase letters, digits and '-', at most 63)."
  }
}

variable "k8s_service_account" {
  description = "ServiceAccount of the CronJob. Reaches the manifests through terraform output and deploy/render-values.sh."
  type        = string
  default     = "app"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.k8s_service_account))
    error_message = "k8s_service_account must be a DNS label (lowercase letters, digits and '-', at most 63)."
  }
}

variable "k8s_admin_namespace" {
  description = "Namespace of the bootstrap Job and the administrator's ServiceAccount; not the CronJob's, so that creating pods there does not give the database administrator's identity."
  type        = string
  default     = "pgwi-admin"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.k8s_admin_namespace))
    error_message = "k8s_admin_namespace must be a DNS label (lowercase letters, digits and '-', at most 63)."
  }
}

variable "k8s_admin_service_account" {
  description = "ServiceAccount of the bootstrap Job. Reaches the manifests through terraform output and deploy/render-values.sh."
  type        = string
  default     = "pgwi-admin"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.k8s_admin_service_account))
    error_message = "k8s_admin_service_account must be a DNS label (lowercase letters, digits and '-', at most 63)."
  }
}

variable "github_oidc_subject" {
  description = "A GitHub Actions job allowed to act as the application's identity (pgwi migrate up from a workflow, docs/github-actions.md), as its OIDC subject: repo:OWNER/REPO:environment:NAME. Empty: none."
  type        = string
  default     = ""
  validation {
    condition     = var.github_oidc_subject == "" || can(regex("^repo:[^/:]+/[^/:]+:(environment:[^:]+|ref:refs/(heads|tags)/.+)$", var.github_oidc_subject))
    error_message = "github_oidc_subject must look like repo:OWNER/REPO:environment:NAME (or repo:OWNER/REPO:ref:refs/heads/BRANCH); pull_request subjects are refused on purpose."
  }
}

variable "enable_bastion" {
  description = "Create a bastion VM with a public IP and SSH (not needed: pgwi needs no manual SQL)."
  type        = bool
  default     = false
}

variable "bastion_ssh_public_key" {
  description = "SSH public key for the bastion (the content of ~/.ssh/id_ed25519.pub); required with enable_bastion."
  type        = string
  default     = ""
}

variable "bastion_allowed_cidr" {
  description = "CIDR allowed to SSH to the bastion (only with enable_bastion)."
  type        = string
  default     = "203.0.113.0/32"
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = { project = "pgwi" }
}
