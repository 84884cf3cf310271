#!/usr/bin/env bash
# The end-to-end suite on a kind cluster, for machines with Docker (the default suite runs on the local
# control plane that `make test` builds). Creates the cluster, builds and loads the operator image and
# the CPU trainer image, installs an S3-compatible store and the chart, then runs tests/e2e against it.
#
#   scripts/kind-e2e.sh            # create (or reuse) the cluster, build, install, test
#   scripts/kind-e2e.sh --delete   # delete the cluster
#
# Needs docker, kind, kubectl and helm on PATH and `make install` done (the tests run from .venv).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

cluster=${LORASWEEP_KIND_CLUSTER:-lorasweep}
tag=${LORASWEEP_IMAGE_TAG:-dev}
system_namespace=lorasweep-system
kubeconfig=${LORASWEEP_KIND_KUBECONFIG:-$PWD/.kind/kubeconfig}

if [[ ${1:-} == --delete ]]; then
  kind delete cluster --name "$cluster"
  exit 0
fi

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "kind-e2e: $tool is not on PATH; install it first" >&2; exit 1; }
done

mkdir -p "$(dirname "$kubeconfig")"
if ! kind get clusters | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --config scripts/kind-config.yaml --kubeconfig "$kubeconfig" --wait 120s
fi
kind export kubeconfig --name "$cluster" --kubeconfig "$kubeconfig"
export KUBECONFIG=$kubeconfig

docker build --target operator -t "lorasweep-operator:$tag" .
docker build --target trainer --build-arg TRAINER_BASE=torch-cpu -t "lorasweep-trainer:$tag-cpu" .
kind load docker-image --name "$cluster" "lorasweep-operator:$tag" "lorasweep-trainer:$tag-cpu"

kubectl create namespace "$system_namespace" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$system_namespace" --overwrite pod-security.kubernetes.io/enforce=restricted
kubectl apply -f scripts/kind-s3.yaml
kubectl -n "$system_namespace" rollout status deployment/lorasweep-s3 --timeout=180s

helm upgrade --install lorasweep charts/lorasweep --namespace "$system_namespace" --wait --timeout 5m \
  --set image.repository=lorasweep-operator --set image.tag="$tag" --set image.pullPolicy=Never

# The suite reaches the store through a port-forward; trainer pods reach it in-cluster.
kubectl -n "$system_namespace" port-forward service/lorasweep-s3 19000:9000 >/dev/null &
port_forward=$!
trap 'kill "$port_forward"' EXIT

export LORASWEEP_E2E_KUBECONFIG=$kubeconfig
export LORASWEEP_E2E_RELEASE_NAMESPACE=$system_namespace
export LORASWEEP_E2E_TRAINER_IMAGE=lorasweep-trainer:$tag-cpu
export LORASWEEP_E2E_S3_ENDPOINT=http://127.0.0.1:19000
export LORASWEEP_E2E_S3_CLUSTER_ENDPOINT=http://lorasweep-s3.$system_namespace.svc:9000
export LORASWEEP_E2E_S3_SECRET=lorasweep-s3
export AWS_ACCESS_KEY_ID=lorasweep-demo AWS_SECRET_ACCESS_KEY=lorasweep-demo-secret AWS_DEFAULT_REGION=us-east-1
.venv/bin/pytest tests/e2e -m e2e "$@"
