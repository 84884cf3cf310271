#!/usr/bin/env bash
# The end-to-end suite on a kind cluster, for machines with Docker (the default suite runs on the local
# control plane that `make test` builds). Creates the cluster, builds and loads the operator image and
# the CPU trainer image, installs an S3-compatible store (MinIO) and the chart, then runs the tiny CPU
# sample sweep through it and waits for it to succeed.
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
# The tiny sample's image name (deploy/samples/tiny-cpu-sweep.yaml).
docker build --target trainer --build-arg TRAINER_BASE=torch-cpu -t lorasweep-trainer:cpu .
kind load docker-image --name "$cluster" "lorasweep-operator:$tag" lorasweep-trainer:cpu

kubectl create namespace "$system_namespace" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$system_namespace" --overwrite pod-security.kubernetes.io/enforce=restricted
kubectl apply -f scripts/kind-s3.yaml
kubectl -n "$system_namespace" rollout status deployment/lorasweep-s3 --timeout=180s

helm upgrade --install lorasweep charts/lorasweep --namespace "$system_namespace" --wait --timeout 5m \
  --set image.repository=lorasweep-operator --set image.tag="$tag" --set image.pullPolicy=Never \
  --set 'policy.allowedImages={lorasweep-trainer}'  # the locally built trainer image the tiny sample runs

# The tiny CPU sample, end to end: synthetic clips into the store (through a port-forward, from this
# checkout's venv: the clips need OpenCV from the dev extra), the sweep applied, then waited for.
kubectl -n "$system_namespace" port-forward service/lorasweep-s3 19000:9000 >/dev/null &
port_forward=$!
trap 'kill "$port_forward"' EXIT
sleep 3
# The throwaway credentials of scripts/kind-s3.yaml.
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:19000 AWS_ACCESS_KEY_ID=lorasweep-demo
export AWS_SECRET_ACCESS_KEY=lorasweep-demo-secret AWS_DEFAULT_REGION=us-east-1
.venv/bin/python - <<'PY'
import boto3
s3 = boto3.client("s3")
if "lorasweep-demo" not in {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}:
    s3.create_bucket(Bucket="lorasweep-demo")
PY
.venv/bin/lorasweep-trainer synth s3://lorasweep-demo/clips/ --actions 8,9,23,1,2 --clips-per-action 8

kubectl apply -n "$system_namespace" -f deploy/samples/tiny-cpu-sweep.yaml
kubectl wait -n "$system_namespace" lsw/tiny-cpu --for=jsonpath='{.status.phase}'=Succeeded --timeout=20m
kubectl get -n "$system_namespace" lsw/tiny-cpu
