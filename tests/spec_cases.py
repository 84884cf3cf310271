"""Good and bad sweep specs that the pydantic models (`parse_spec`, what `lorasweep validate` and the operator
run) and the API server (the CRD's schema and CEL rules) must judge alike. tests/unit/test_reliability_spec.py
runs them through pydantic, tests/integration/test_reliability_crd.py through the real API server, so a rule
changed in one place and not the other fails a test.

A bad case names the text both messages hold, or one text per side where the two phrasings differ (pydantic's
and the API server's wording of a bound or an unknown field). `cluster_only` cases are rules of the CRD alone,
on purpose: a local `lorasweep run` reads clips from and writes results to local folders, so pydantic accepts
them there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Spec = dict[str, Any]


def base_spec() -> Spec:
    return {
        "image": "lorasweep-trainer:test",
        "command": ["python", "-c", "pass"],
        "dataset": {"source": "s3://bucket/clips/"},
        "training": {"epochs": 2},
        "storage": {"output": "s3://bucket/sweeps/"},
        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
        "search": {"list": [{"learningRate": 1e-3}]},
    }


@dataclass(frozen=True)
class Case:
    id: str
    change: Callable[[Spec], Any]
    text: str = ""  # in both messages
    api_text: str = ""  # the API server's wording, when it differs
    model_text: str = ""  # pydantic's wording, when it differs
    cluster_only: bool = False

    def spec(self) -> Spec:
        spec = copy.deepcopy(base_spec())
        self.change(spec)
        return spec

    @property
    def api_message(self) -> str:
        return self.api_text or self.text

    @property
    def model_message(self) -> str:
        return self.model_text or self.text


def _search(**search: Any) -> Callable[[Spec], Any]:
    return lambda spec: spec.update(search=search)


RANK_WITHOUT_ALPHA = "without lora.alpha; give alpha too"


def _pod(**pod: Any) -> Callable[[Spec], Any]:
    return lambda spec: spec.update(pod=pod)


def _mounted(*volumes: dict[str, Any], path: str = "/mnt/x", **pod: Any) -> Callable[[Spec], Any]:
    """spec.pod with `volumes`, the first mounted at `path`, the others under /mnt/<name>."""
    mounts = [{"name": v["name"], "mountPath": path if i == 0 else f"/mnt/{v['name']}"} for i, v in enumerate(volumes)]
    return _pod(volumes=list(volumes), volumeMounts=mounts, **pod)


def _env(*names: str) -> list[dict[str, str]]:
    return [{"name": name, "value": "1"} for name in names]


def _secret_env(count: int) -> list[dict[str, Any]]:
    return [{"name": f"V{i}", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}} for i in range(count)]


SHM = {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}
RESERVED_KEY = "belong to Kubernetes and the operator; use a key of your own"
MOUNT_ROOTS = "mount at /dev/shm or at or under /tmp, /mnt, /data, /models, /cache, /scratch, /workspace"

GOOD = [
    Case("list", lambda spec: None),
    Case("groups-rank-with-alpha", _search(groups=[{"name": "rank", "values": [{"lora": {"rank": 8, "alpha": 16}}]}])),
    Case("groups-alpha-alone", _search(groups=[{"name": "alpha", "values": [{"lora": {"alpha": 64}}]}])),
    Case("grid-rank-with-alpha", _search(grid={"lora": {"rank": [8, 16], "alpha": [16, 32]}})),
    Case("grid-alpha-alone", _search(grid={"lora": {"alpha": [16, 64]}, "learningRate": [1e-4]})),
    Case(
        "random-rank-with-alpha",
        _search(random={"samples": 3, "space": {"lora": {"rank": {"choice": [8, 16]}, "alpha": {"choice": [32]}}}}),
    ),
    Case("random-log-uniform", _search(random={"samples": 2, "space": {"learningRate": {"logUniform": {"min": 1e-5, "max": 1e-3}}}})),
    Case("from-sweep-override-rank-with-alpha", _search(fromSweep={"name": "phase1", "top": 3, "override": {"lora": {"rank": 8, "alpha": 16}}})),
    Case("from-sweep-override-epochs", _search(fromSweep={"name": "phase1", "override": {"epochs": 10}})),
    Case("seeds", _search(list=[{"learningRate": 1e-3}], seeds=[1, 2, 3])),
    Case("grid-at-the-cap", _search(grid={"learningRate": [round(1e-5 * (i + 1), 8) for i in range(100)],
                                          "weightDecay": [round(0.001 * j, 6) for j in range(100)]})),
    Case("objective-val-loss", lambda spec: spec.update(objective={"metric": "val_loss", "goal": "minimize"})),
    Case("packing", lambda spec: spec.update(packing=4, featureCache="off")),
    Case("mlflow-credentials-in-pod-env", lambda spec: spec.update(
        pod={"env": [{"name": "MLFLOW_TRACKING_TOKEN", "valueFrom": {"secretKeyRef": {"name": "m", "key": "token"}}}]},
        tracking={"mlflow": {"uri": "https://mlflow.example", "experiment": "ntu"}})),
    Case("mlflow-tracking", lambda spec: spec.update(tracking={"mlflow": {"uri": "https://mlflow.example", "experiment": "ntu", "credentialsSecret": "mlflow"}})),
    Case("pod-everything", _pod(
        env=[{"name": "PUSHGATEWAY_URL", "value": "http://pgw:9091"}, {"name": "EMPTY", "value": ""},
             {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tokens", "key": "hub.token", "optional": True}}},
             {"name": "MLFLOW_TRACKING_URI", "valueFrom": {"configMapKeyRef": {"name": "tracking", "key": "uri"}}}],
        volumes=[SHM, {"name": "cache", "persistentVolumeClaim": {"claimName": "model-cache", "readOnly": True}},
                 {"name": "ca", "configMap": {"name": "ca-bundle", "items": [{"key": "ca.crt", "path": "certs/ca.crt"}]}},
                 {"name": "scratch", "emptyDir": {}}],
        volumeMounts=[{"name": "shm", "mountPath": "/dev/shm"},
                      {"name": "cache", "mountPath": "/models/hf", "subPath": "huggingface", "readOnly": True},
                      {"name": "ca", "mountPath": "/mnt/ca"}, {"name": "scratch", "mountPath": "/tmp"},
                      {"name": "scratch", "mountPath": "/workspace/out", "subPath": "out"}],
        labels={"team": "vision", "example.com/cost-center": "ml-42", "empty": ""},
        annotations={"sidecar.istio.io/inject": "false", "example.com/note": "anything: at all"})),
    Case("pod-empty", _pod()),
    Case("pod-four-secret-values", _pod(env=_secret_env(4))),
    Case("pod-kubernetes-io-look-alike-prefix", _pod(labels={"notkubernetes.io/x": "a", "kubernetes.iox/y": "b"})),
    Case("model-from-s3", lambda spec: spec.update(model={"source": "s3://models/vjepa2-vitl/"})),
    Case("model-on-a-volume", lambda spec: spec.update(model={"source": "/models/vjepa2-vitl"})),
    Case("model-hub-revision", lambda spec: spec.update(model={"source": "facebook/vjepa2-vitl-fpc16-256-ssv2",
                                                               "revision": "main"})),
]  # fmt: skip

BAD = [
    Case(
        "model-name-renamed",
        lambda spec: spec.update(model={"name": "facebook/vjepa2-vitl-fpc16-256-ssv2"}),
        text="model.name was renamed to model.source: write model.source",
    ),
    Case(
        "model-source-relative-path",
        lambda spec: spec.update(model={"source": "./checkpoints/vjepa2"}),
        text="is neither a hub name (org/name), an s3://bucket/prefix/ nor an absolute path",
    ),
    Case(
        "model-source-s3-without-bucket",
        lambda spec: spec.update(model={"source": "s3:///models/"}),
        text="names no bucket; write s3://bucket/prefix/",
    ),
    Case(
        "model-revision-of-an-s3-folder",
        lambda spec: spec.update(model={"source": "s3://models/vjepa2/", "revision": "main"}),
        text="model.revision applies to hub names only",
    ),
    Case(
        "early-stopping-with-packing",
        lambda spec: spec.update(packing=2, earlyStopping={"algorithm": "asha"}),
        text="with packing above 1 would end the other trials",
    ),
    Case(
        "negative-learning-rate",
        lambda spec: spec["training"].update(learningRate=-1e-4),
        text="should be greater than 0",
    ),
    Case(
        "splits-not-summing-to-1",
        lambda spec: spec["dataset"].update(split={"train": 0.7, "val": 0.2, "test": 0.2}),
        text="split fractions must sum to 1",
    ),
    Case(
        "unknown-field",
        lambda spec: spec.update(learnRate=1e-3),
        api_text='unknown field "spec.learnRate"',
        model_text="spec.learnRate: Extra inputs are not permitted",
    ),
    Case(
        "two-search-kinds",
        lambda spec: spec["search"].update(grid={"epochs": [1, 2]}),
        text="search needs exactly one of groups, grid, random, list, fromSweep",
    ),
    Case("no-search-kind", _search(seeds=[1]), text="search needs exactly one of groups, grid, random, list, fromSweep"),
    Case("list-rank-without-alpha", _search(list=[{"lora": {"rank": 8}}]), text=RANK_WITHOUT_ALPHA),
    Case(
        "groups-rank-without-alpha",
        _search(groups=[{"name": "rank", "values": [{"lora": {"rank": 8}}]}]),
        text=RANK_WITHOUT_ALPHA,
    ),
    Case(
        "from-sweep-override-rank-without-alpha",
        _search(fromSweep={"name": "phase1", "override": {"lora": {"rank": 8}}}),
        text=RANK_WITHOUT_ALPHA,
    ),
    Case("grid-rank-without-alpha", _search(grid={"lora": {"rank": [8, 16]}}), text=RANK_WITHOUT_ALPHA),
    Case(
        "random-rank-without-alpha",
        _search(random={"samples": 2, "space": {"lora": {"rank": {"choice": [8, 16]}}}}),
        text=RANK_WITHOUT_ALPHA,
    ),
    Case(
        "random-space-empty",
        _search(random={"samples": 2, "space": {}}),
        text="search.random.space names no parameter; add one",
    ),
    Case(
        "distribution-two-kinds",
        _search(random={"samples": 2, "space": {"learningRate": {"choice": [1e-3], "uniform": {"min": 0, "max": 1}}}}),
        text="a distribution needs exactly one of choice, uniform, logUniform",
    ),
    Case(
        "log-uniform-from-0",
        _search(random={"samples": 2, "space": {"learningRate": {"logUniform": {"min": 0, "max": 1e-3}}}}),
        text="logUniform needs min > 0",
    ),
    Case(
        "range-reversed",
        _search(random={"samples": 2, "space": {"weightDecay": {"uniform": {"min": 0.1, "max": 0.01}}}}),
        text="a range needs min < max",
    ),
    Case(
        "unknown-objective",
        lambda spec: spec.update(objective={"metric": "test_accuracy"}),
        api_text='Unsupported value: "test_accuracy": supported values: "val_accuracy", "val_macro_f1", "val_loss"',
        model_text="Input should be 'val_accuracy', 'val_macro_f1' or 'val_loss'",
    ),
    Case(
        "parallelism-0",
        lambda spec: spec.update(parallelism=0),
        text="should be greater than or equal to 1",
    ),
    Case(
        "empty-command",
        lambda spec: spec.update(command=["", "train"]),
        text="command[0] must name the program to run",
    ),
    Case(
        "odd-frames-per-clip",
        lambda spec: spec.update(model={"framesPerClip": 7}),
        api_text="should be a multiple of 2",
        model_text="framesPerClip must be even",
    ),
    Case(
        "duplicate-seeds",
        _search(list=[{"learningRate": 1e-3}], seeds=[1, 1]),
        api_text="Duplicate value: 1",
        model_text="search.seeds has duplicates",
    ),
    Case(
        "too-many-trials-cap",
        lambda spec: spec.update(maxTrials=10_001),
        text="less than or equal to 10000",
    ),
    Case(
        "grid-over-the-cap",
        _search(grid={"learningRate": [round(1e-5 * (i + 1), 8) for i in range(100)],
                      "weightDecay": [round(0.001 * j, 6) for j in range(101)]}),
        text="search.grid expands to more trials than maxTrials",
    ),
    Case(
        "grid-over-a-lowered-cap",
        lambda spec: spec.update(maxTrials=3, search={"grid": {"learningRate": [1e-4, 2e-4]}, "seeds": [1, 2]}),
        text="search.grid expands to more trials than maxTrials",
    ),
    Case("mlflow-uri-not-http", lambda spec: spec.update(tracking={"mlflow": {"uri": "sqlite:///mlflow.db", "experiment": "ntu"}}),
         text="tracking.mlflow.uri must be an http:// or https:// URL"),
    Case("mlflow-without-experiment", lambda spec: spec.update(tracking={"mlflow": {"uri": "http://mlflow:5000"}}),
         api_text="spec.tracking.mlflow.experiment: Required value", model_text="spec.tracking.mlflow.experiment: Field required"),
    # spec.pod: what stays the operator's whatever the admin's policy says
    Case("pod-env-lorasweep", _pod(env=_env("LORASWEEP_TRIAL")),
         text="spec.pod.env LORASWEEP_TRIAL: LORASWEEP_ variables are the trial's configuration"),
    Case("pod-env-cuda", _pod(env=_env("CUDA_VISIBLE_DEVICES")),
         text="spec.pod.env CUDA_VISIBLE_DEVICES: CUDA_ and NVIDIA_ variables are set by the GPU runtime"),
    Case("pod-env-nvidia", _pod(env=_env("NVIDIA_VISIBLE_DEVICES")),
         text="spec.pod.env NVIDIA_VISIBLE_DEVICES: CUDA_ and NVIDIA_ variables"),
    Case("pod-env-credentials", _pod(env=_env("AWS_SECRET_ACCESS_KEY")),
         text="spec.pod.env AWS_SECRET_ACCESS_KEY: the operator sets AWS_SECRET_ACCESS_KEY from spec.storage"),
    Case("pod-env-endpoint", _pod(env=_env("AWS_ENDPOINT_URL_S3")),
         text="the operator sets AWS_ENDPOINT_URL_S3 from spec.storage"),
    Case("pod-env-hf-token", _pod(env=_env("HF_TOKEN")), text="the operator sets HF_TOKEN from spec.storage"),
    Case("pod-env-and-tracking-secret-both-give-mlflow-credentials",
         lambda spec: spec.update(pod={"env": [{"name": "MLFLOW_TRACKING_TOKEN", "value": "t"}]},
                                  tracking={"mlflow": {"uri": "http://m:5000", "experiment": "e", "credentialsSecret": "m"}}),
         text="which the operator sets from spec.tracking.mlflow.credentialsSecret"),
    Case("pod-env-value-and-value-from",
         _pod(env=[{"name": "X", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
         text="spec.pod.env X needs exactly one of value and valueFrom"),
    Case("pod-env-neither", _pod(env=[{"name": "X"}]), text="spec.pod.env X needs exactly one of value and valueFrom"),
    Case("pod-env-two-refs", _pod(env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"},
                                                                   "configMapKeyRef": {"name": "c", "key": "k"}}}]),
         text="an env valueFrom needs exactly one of secretKeyRef and configMapKeyRef"),
    Case("pod-env-name", _pod(env=_env("NOT-A-NAME")), api_text="should match '^[A-Za-z_][A-Za-z0-9_]*$'",
         model_text="String should match pattern '^[A-Za-z_][A-Za-z0-9_]*$'"),
    Case("pod-env-twice", _pod(env=_env("X", "X")), api_text="Duplicate value",
         model_text="spec.pod.env X given more than once"),
    Case("pod-five-secret-values", _pod(env=_secret_env(5)),
         text="spec.pod.env takes more than 4 values from Secrets"),
    Case("pod-five-config-map-refs", _mounted(
        *[{"name": f"c{i}", "configMap": {"name": f"c{i}"}} for i in range(4)],
        env=[{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]),
         text="spec.pod names ConfigMaps more than 4 times"),
    Case("pod-mount-over-code", _mounted(SHM, path="/usr/local/lib/python3.11/site-packages"),
         text=f"spec.pod.volumeMounts /usr/local/lib/python3.11/site-packages: {MOUNT_ROOTS}"),
    Case("pod-mount-over-the-termination-log", _mounted(SHM, path="/dev/termination-log"),
         text=f"spec.pod.volumeMounts /dev/termination-log: {MOUNT_ROOTS}"),
    Case("pod-mount-over-the-progress-token", _mounted(SHM, path="/var/run/secrets/lorasweep.dev/progress"),
         text=f"spec.pod.volumeMounts /var/run/secrets/lorasweep.dev/progress: {MOUNT_ROOTS}"),
    Case("pod-mount-over-home", _mounted(SHM, path="/home/lorasweep"), text=MOUNT_ROOTS),
    Case("pod-mount-dot-dot", _mounted(SHM, path="/mnt/../usr"), text=f"spec.pod.volumeMounts /mnt/../usr: {MOUNT_ROOTS}"),
    Case("pod-mount-beside-a-root", _mounted(SHM, path="/tmpfoo"), text=f"spec.pod.volumeMounts /tmpfoo: {MOUNT_ROOTS}"),
    Case("pod-mount-relative", _mounted(SHM, path="mnt/x"), text=f"spec.pod.volumeMounts mnt/x: {MOUNT_ROOTS}"),
    Case("pod-sub-path-up", _pod(volumes=[SHM], volumeMounts=[{"name": "shm", "mountPath": "/mnt/x", "subPath": "../x"}]),
         text="spec.pod.volumeMounts subPath ../x: give a relative path without . or .. parts"),
    Case("pod-config-map-item-path-up",
         _mounted({"name": "c", "configMap": {"name": "c", "items": [{"key": "k", "path": "a/../../etc"}]}}),
         text="spec.pod.volumes configMap.items path a/../../etc: give a relative path"),
    Case("pod-mount-twice", _pod(volumes=[SHM], volumeMounts=[{"name": "shm", "mountPath": "/mnt/x"}] * 2),
         api_text="Duplicate value", model_text="spec.pod.volumeMounts /mnt/x given more than once"),
    Case("pod-mount-of-no-volume", _pod(volumes=[SHM], volumeMounts=[{"name": "shm", "mountPath": "/dev/shm"},
                                                                     {"name": "cache", "mountPath": "/cache"}]),
         text="spec.pod.volumeMounts cache: no such volume in spec.pod.volumes"),
    Case("pod-volume-mounted-nowhere", _pod(volumes=[SHM]), text="spec.pod.volumes shm mounted nowhere"),
    Case("pod-volume-of-two-kinds", _mounted({"name": "v", "emptyDir": {}, "configMap": {"name": "c"}}),
         text="spec.pod.volumes v needs exactly one of emptyDir, configMap, persistentVolumeClaim"),
    Case("pod-volume-of-no-kind", _mounted({"name": "v"}),
         text="spec.pod.volumes v needs exactly one of emptyDir, configMap, persistentVolumeClaim"),
    Case("pod-volume-named-like-the-operators", _mounted({"name": "lorasweep-progress-token", "emptyDir": {}}),
         text="spec.pod.volumes lorasweep-progress-token: names starting with lorasweep- are the operator's"),
    Case("pod-volume-twice", _pod(volumes=[SHM, SHM], volumeMounts=[{"name": "shm", "mountPath": "/dev/shm"}]),
         api_text="Duplicate value", model_text="spec.pod.volumes shm given more than once"),
    Case("pod-host-path", _mounted({"name": "v", "hostPath": {"path": "/"}}),
         api_text='unknown field "spec.pod.volumes[0].hostPath"', model_text="Extra inputs are not permitted"),
    Case("pod-empty-dir-medium", _mounted({"name": "v", "emptyDir": {"medium": "HugePages"}}),
         api_text='Unsupported value: "HugePages"', model_text="Input should be '' or 'Memory'"),
    Case("pod-empty-dir-size", _mounted({"name": "v", "emptyDir": {"sizeLimit": "lots"}}),
         api_text="should match", model_text="String should match pattern"),
    Case("pod-security-context", _pod(securityContext={"privileged": True}),
         api_text='unknown field "spec.pod.securityContext"', model_text="Extra inputs are not permitted"),
    Case("pod-label-kubernetes-io", _pod(labels={"app.kubernetes.io/name": "x"}),
         text="spec.pod.labels app.kubernetes.io/name: keys under kubernetes.io, k8s.io, x-k8s.io and lorasweep.dev"),
    Case("pod-label-lorasweep", _pod(labels={"lorasweep.dev/trial": "x"}), text="spec.pod.labels lorasweep.dev/trial: "),
    Case("pod-label-kueue", _pod(labels={"kueue.x-k8s.io/queue-name": "x"}), text=RESERVED_KEY),
    Case("pod-label-job-name", _pod(labels={"job-name": "x"}), text="spec.pod.labels job-name: "),
    Case("pod-annotation-batch", _pod(annotations={"batch.kubernetes.io/job-completion-index": "0"}),
         text="spec.pod.annotations batch.kubernetes.io/job-completion-index: keys under"),
    Case("pod-annotation-apparmor", _pod(annotations={"container.apparmor.security.beta.kubernetes.io/trainer": "unconfined"}),
         text=RESERVED_KEY),
    Case("pod-annotation-k8s-io", _pod(annotations={"k8s.io/x": "a"}), text=RESERVED_KEY),
    Case("pod-label-key-malformed", _pod(labels={"not a key": "x"}),
         text="spec.pod.labels not a key: a key is an optional DNS prefix and '/'"),
    Case("pod-label-value-malformed", _pod(labels={"team": "not a value"}), api_text="should match",
         model_text="String should match pattern"),
    Case("source-not-s3", lambda spec: spec["dataset"].update(source="/data/clips"),
         text="dataset.source must be an s3:// URI", cluster_only=True),
    Case("output-not-s3", lambda spec: spec["storage"].update(output="/data/out"),
         text="storage.output must be an s3:// URI", cluster_only=True),
]  # fmt: skip
