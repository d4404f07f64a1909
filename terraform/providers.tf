terraform {
  required_version = ">= 1.6"
  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # 4.65 renamed the federated credentials' parent_id to user_assigned_identity_id; 5.x removes parent_id.
      version = "~> 4.65"
    }
  }
}

provider "azurerm" {
  features {}
  subscription_id = var.subscription_id
}

data "azurerm_client_config" "current" {}
