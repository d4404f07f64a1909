# The application's identity: what the CronJob's pods become through workload identity. Its NAME is the
# database user (pgwi admin bootstrap creates the role from it).
resource "azurerm_user_assigned_identity" "app" {
  name                = "id-${var.name}-app"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = var.tags
}

resource "azurerm_federated_identity_credential" "app" {
  name                      = "aks-${var.k8s_namespace}-${var.k8s_service_account}"
  user_assigned_identity_id = azurerm_user_assigned_identity.app.id
  issuer                    = azurerm_kubernetes_cluster.main.oidc_issuer_url
  subject                   = "system:serviceaccount:${var.k8s_namespace}:${var.k8s_service_account}"
  audience                  = ["api://AzureADTokenExchange"]
}

# Optional: one GitHub Actions job (an environment's, with its protection rules) may act as the application's
# identity, to run `pgwi migrate up` with no stored secret.
resource "azurerm_federated_identity_credential" "github" {
  count                     = var.github_oidc_subject == "" ? 0 : 1
  name                      = "github-actions"
  user_assigned_identity_id = azurerm_user_assigned_identity.app.id
  issuer                    = "https://token.actions.githubusercontent.com"
  subject                   = var.github_oidc_subject
  audience                  = ["api://AzureADTokenExchange"]
}

# The server's Entra administrator: a service principal (managed identity) federated with the bootstrap
# Job's ServiceAccount, so the original's manual SQL runs in-cluster with no person's token. That
# ServiceAccount has a namespace of its own: anyone who may create pods in a namespace may run them as any of
# its ServiceAccounts.
resource "azurerm_user_assigned_identity" "admin" {
  name                = "id-${var.name}-admin"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = var.tags
}

resource "azurerm_federated_identity_credential" "admin" {
  name                      = "aks-${var.k8s_admin_namespace}-${var.k8s_admin_service_account}"
  user_assigned_identity_id = azurerm_user_assigned_identity.admin.id
  issuer                    = azurerm_kubernetes_cluster.main.oidc_issuer_url
  subject                   = "system:serviceaccount:${var.k8s_admin_namespace}:${var.k8s_admin_service_account}"
  audience                  = ["api://AzureADTokenExchange"]

  lifecycle {
    precondition {
      condition     = var.k8s_admin_namespace != var.k8s_namespace
      error_message = "k8s_admin_namespace must differ from k8s_namespace: whoever may create pods in the application's namespace must not become the database administrator."
    }
  }
}
