# Checks on the variables that involve more than one of them (a variable's own validation sees only itself
# before Terraform 1.9), made at plan, before anything is created. They depend on the variables alone, so
# deploy/ci/offline-checks.sh plans this file with variables.tf and no provider, to show each one refuses
# what it should and lets the rest through.
resource "terraform_data" "input_checks" {
  lifecycle {
    precondition {
      condition     = (length(var.aks_api_authorized_ip_ranges) > 0) != var.aks_api_open_to_internet
      error_message = "aks_api_authorized_ip_ranges is empty, which would open the AKS API server to the whole internet: set it in terraform.tfvars to your workstation's and CI's public addresses (e.g. [\"203.0.113.10/32\"]), or set aks_api_open_to_internet = true to choose that on purpose (with no ranges)."
    }
    precondition {
      condition     = !var.enable_bastion || can(regex("^(ssh-rsa|ssh-ed25519) [A-Za-z0-9+/]+=*( .*)?$", trimspace(var.bastion_ssh_public_key)))
      error_message = "enable_bastion needs bastion_ssh_public_key: set it in terraform.tfvars to your OpenSSH public key, the one line of ~/.ssh/id_ed25519.pub (ssh-keygen -t ed25519 creates it; Azure takes ssh-ed25519 and ssh-rsa keys), or set enable_bastion = false."
    }
  }
}
