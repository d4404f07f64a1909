# Everything the deployment needs; `task kube:values` turns these into deploy/k8s/values/azure.env
# (deploy/render-values.sh).
output "subscription_id" {
  description = "The subscription the stack is in: every az command of the Taskfile and deploy/ names it (--subscription), whatever az's default."
  value       = data.azurerm_client_config.current.subscription_id
}

output "resource_group" {
  value = azurerm_resource_group.main.name
}

output "aks_name" {
  value = azurerm_kubernetes_cluster.main.name
}

output "oidc_issuer_url" {
  value = azurerm_kubernetes_cluster.main.oidc_issuer_url
}

output "acr_login_server" {
  value = azurerm_container_registry.main.login_server
}

output "acr_name" {
  value = azurerm_container_registry.main.name
}

output "postgres_host" {
  value = azurerm_postgresql_flexible_server.main.fqdn
}

output "postgres_subnet_cidr" {
  description = "The server's delegated subnet: the NetworkPolicy's only destination for 5432."
  value       = one(azurerm_subnet.postgres.address_prefixes)
}

output "postgres_database" {
  value = var.postgres_database
}

output "app_identity_name" {
  description = "The database user of the CronJob."
  value       = azurerm_user_assigned_identity.app.name
}

output "app_client_id" {
  value = azurerm_user_assigned_identity.app.client_id
}

output "app_object_id" {
  value = azurerm_user_assigned_identity.app.principal_id
}

output "admin_identity_name" {
  value = azurerm_user_assigned_identity.admin.name
}

output "admin_client_id" {
  value = azurerm_user_assigned_identity.admin.client_id
}

output "k8s_namespace" {
  value = var.k8s_namespace
}

output "k8s_service_account" {
  value = var.k8s_service_account
}

output "k8s_admin_namespace" {
  value = var.k8s_admin_namespace
}

output "k8s_admin_service_account" {
  value = var.k8s_admin_service_account
}

output "bastion_public_ip" {
  value = var.enable_bastion ? azurerm_public_ip.bastion[0].ip_address : null
}

output "tenant_id" {
  description = "The Entra tenant (AZURE_TENANT_ID for the github-actions source)."
  value       = data.azurerm_client_config.current.tenant_id
}
