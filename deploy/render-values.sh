#!/usr/bin/env bash
# Prints deploy/k8s/azure.env from `terraform output`: the only place Terraform's values enter the manifests.
# Usage: render-values.sh IMAGE_TAG
set -euo pipefail
tag="${1:?usage: render-values.sh IMAGE_TAG}"
out() { terraform -chdir="$(dirname "$0")/../terraform" output -raw "$1"; }
cat <<ENV
IMAGE=$(out acr_login_server)/pgwi:${tag}
APP_CLIENT_ID=$(out app_client_id)
APP_OBJECT_ID=$(out app_object_id)
ADMIN_CLIENT_ID=$(out admin_client_id)
ADMIN_IDENTITY_NAME=$(out admin_identity_name)
DBHOST=$(out postgres_host)
DBNAME=$(out postgres_database)
DBUSER=$(out app_identity_name)
ENV
