resource "azurerm_log_analytics_workspace" "main" {
  name                = "log-${var.name}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  sku                 = "PerGB2018"
  retention_in_days   = 30
  tags                = var.tags
}

resource "azurerm_kubernetes_cluster" "main" {
  #checkov:skip=CKV_AZURE_117:Disks are encrypted at rest with platform-managed keys; a customer-managed disk encryption set needs a Key Vault this demo stack does not run.
  #checkov:skip=CKV_AZURE_227:Encryption at host needs the EncryptionAtHost feature registered on the subscription; enabling it here would fail a first apply on most subscriptions.
  #checkov:skip=CKV_AZURE_232:One small system pool keeps the stack cheap; add a user pool for production workloads.
  #checkov:skip=CKV_AZURE_170:The free tier is enough for a CronJob every five minutes; the paid SLA is a cost decision.
  #checkov:skip=CKV_AZURE_172:The Secrets Store CSI driver is not used: pgwi needs no secrets.
  #checkov:skip=CKV_AZURE_6:Authorized ranges come from var.aks_api_authorized_ip_ranges, which checkov cannot evaluate; an empty list is refused at plan (terraform/checks.tf) unless aks_api_open_to_internet is true.
  #checkov:skip=CKV_AZURE_115:A private API server needs a VPN or jump host for kubectl; this stack keeps the API public behind authorized ranges and Entra RBAC.
  name                              = "aks-${var.name}"
  location                          = azurerm_resource_group.main.location
  resource_group_name               = azurerm_resource_group.main.name
  dns_prefix                        = "aks-${var.name}"
  oidc_issuer_enabled               = true
  workload_identity_enabled         = true
  role_based_access_control_enabled = true
  local_account_disabled            = true
  azure_policy_enabled              = true
  automatic_upgrade_channel         = "patch"
  sku_tier                          = "Free"
  tags                              = var.tags

  azure_active_directory_role_based_access_control {
    azure_rbac_enabled = true
    tenant_id          = data.azurerm_client_config.current.tenant_id
  }

  # Container Insights with managed-identity authentication (the legacy, key-based one is retired): the agent
  # sends what the data collection rule below names, to the workspace it names.
  oms_agent {
    log_analytics_workspace_id      = azurerm_log_analytics_workspace.main.id
    msi_auth_for_monitoring_enabled = true
  }

  api_server_access_profile {
    authorized_ip_ranges = var.aks_api_authorized_ip_ranges
  }

  default_node_pool {
    name                        = "system"
    vm_size                     = var.aks_node_size
    node_count                  = var.aks_node_count
    vnet_subnet_id              = azurerm_subnet.aks.id
    temporary_name_for_rotation = "systemtmp"
    max_pods                    = 50
    os_disk_type                = "Ephemeral"
    os_disk_size_gb             = 64
    upgrade_settings {
      max_surge = "10%"
    }
  }

  identity {
    type = "SystemAssigned"
  }

  # Azure CNI powered by Cilium: Cilium enforces the NetworkPolicies (Azure NPM on Linux is being retired).
  # Cilium needs the overlay mode (or a pod subnet): pods take addresses from pod_cidr, outside the VNet, and
  # reach PostgreSQL's subnet from their node's address.
  network_profile {
    network_plugin      = "azure"
    network_plugin_mode = "overlay"
    network_data_plane  = "cilium"
    network_policy      = "cilium"
    pod_cidr            = "10.244.0.0/16"
    service_cidr        = "10.200.0.0/16"
    dns_service_ip      = "10.200.0.10"
  }
}

# Where Container Insights sends its data (Microsoft's Terraform onboarding for managed-identity
# authentication): the cluster's agent reads this rule through the association below.
resource "azurerm_monitor_data_collection_rule" "container_insights" {
  name                = "MSCI-${azurerm_resource_group.main.location}-${azurerm_kubernetes_cluster.main.name}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  description         = "Container Insights for ${azurerm_kubernetes_cluster.main.name}"
  tags                = var.tags

  destinations {
    log_analytics {
      name                  = "ciworkspace"
      workspace_resource_id = azurerm_log_analytics_workspace.main.id
    }
  }

  data_flow {
    streams      = local.container_insights_streams
    destinations = ["ciworkspace"]
  }

  data_sources {
    extension {
      name           = "ContainerInsightsExtension"
      extension_name = "ContainerInsights"
      streams        = local.container_insights_streams
      extension_json = jsonencode({
        dataCollectionSettings = {
          interval               = "1m"
          namespaceFilteringMode = "Off"
          enableContainerLogV2   = true
        }
      })
    }
  }
}

resource "azurerm_monitor_data_collection_rule_association" "container_insights" {
  name                    = "ContainerInsightsExtension"
  target_resource_id      = azurerm_kubernetes_cluster.main.id
  data_collection_rule_id = azurerm_monitor_data_collection_rule.container_insights.id
  description             = "Container Insights for this cluster: deleting this association stops its data collection."
}

locals {
  # The streams of Microsoft's onboarding sample; with enableContainerLogV2 the containers' output is in
  # ContainerLogV2.
  container_insights_streams = [
    "Microsoft-ContainerLog",
    "Microsoft-ContainerLogV2",
    "Microsoft-KubeEvents",
    "Microsoft-KubePodInventory",
    "Microsoft-KubeNodeInventory",
    "Microsoft-KubePVInventory",
    "Microsoft-KubeServices",
    "Microsoft-KubeMonAgentEvents",
    "Microsoft-InsightsMetrics",
    "Microsoft-ContainerInventory",
    "Microsoft-ContainerNodeInventory",
    "Microsoft-Perf",
  ]
}

resource "azurerm_container_registry" "main" {
  #checkov:skip=CKV_AZURE_233:Zone redundancy is a Premium-SKU feature; Standard is enough for one image.
  #checkov:skip=CKV_AZURE_237:Dedicated data endpoints are a Premium-SKU feature.
  #checkov:skip=CKV_AZURE_164:Content trust is a Premium-SKU feature; images are pushed by tag from this repository's Taskfile.
  #checkov:skip=CKV_AZURE_165:Geo-replication is a Premium-SKU feature and the stack is single-region.
  #checkov:skip=CKV_AZURE_166:Quarantine is a Premium-SKU feature.
  #checkov:skip=CKV_AZURE_139:Private-only registries need Premium and a private endpoint; `task image:push` runs from a workstation. Admin user is disabled and pulls use the kubelet identity.
  #checkov:skip=CKV_AZURE_167:Retention policies for untagged manifests are a Premium-SKU feature.
  name                          = "cr${var.name}${substr(md5(azurerm_resource_group.main.id), 0, 6)}"
  location                      = azurerm_resource_group.main.location
  resource_group_name           = azurerm_resource_group.main.name
  sku                           = "Standard"
  admin_enabled                 = false
  public_network_access_enabled = true
  tags                          = var.tags
}

resource "azurerm_role_assignment" "kubelet_acr_pull" {
  scope                            = azurerm_container_registry.main.id
  role_definition_name             = "AcrPull"
  principal_id                     = azurerm_kubernetes_cluster.main.kubelet_identity[0].object_id
  skip_service_principal_aad_check = true
}

# Lets whoever applies this stack use kubectl (local accounts are disabled; access is through Entra ID).
resource "azurerm_role_assignment" "deployer_cluster_admin" {
  scope                = azurerm_kubernetes_cluster.main.id
  role_definition_name = "Azure Kubernetes Service RBAC Cluster Admin"
  principal_id         = data.azurerm_client_config.current.object_id
}
