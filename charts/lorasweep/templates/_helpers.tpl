{{/*
Names are cut to 63 characters (the DNS label limit of Kubernetes names and label values) and never
end in a dash after the cut.
*/}}
{{- define "lorasweep.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lorasweep.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A name derived from the full name: "<fullname>-<suffix>", the full name shortened so the whole stays <= 63. */}}
{{- define "lorasweep.componentName" -}}
{{- $suffix := .suffix }}
{{- $max := sub 62 (len $suffix) | int }}
{{- printf "%s-%s" (include "lorasweep.fullname" .root | trunc $max | trimSuffix "-") $suffix }}
{{- end }}

{{- define "lorasweep.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lorasweep.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lorasweep.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "lorasweep.labels" -}}
helm.sh/chart: {{ include "lorasweep.chart" . }}
{{ include "lorasweep.selectorLabels" . }}
app.kubernetes.io/version: {{ regexReplaceAll "[^-A-Za-z0-9_.]" (.Values.image.tag | default .Chart.AppVersion) "_" | trunc 63 | trimAll "-_." | quote }}
app.kubernetes.io/part-of: lorasweep
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "lorasweep.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lorasweep.fullname" .) .Values.serviceAccount.name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lorasweep.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Namespaced mode when operator.watchNamespaces lists namespaces; cluster mode otherwise. */}}
{{- define "lorasweep.clusterMode" -}}
{{- if not .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
The permissions the operator uses, and no others: the calls in operator/lorasweep_operator/kube.py plus
what kopf itself does (tests/integration/test_chart_rbac.py derives the same list from the code and
holds it equal to this one and to deploy/rbac/):
  lorasweeps         get (kube.get_sweep), list and watch (kopf's watch), patch (kopf's progress
                     annotations and finalizer)
  lorasweeps/status  patch (kube.patch_status: the status rebuilt on every pass)
  lorasweeps/finalizers  update: trial Jobs' ownerReferences set blockOwnerDeletion, which clusters with
                     OwnerReferencesPermissionEnforcement allow only to those who may update the owner's finalizers
  jobs               create (kube.create_job), list (kube.list_jobs), watch (kopf's Job event handler)
  pods               list (kube.list_pods: finished trials' termination messages)
  events             create (kube.emit_event and kopf's own handler events)
*/}}
{{- define "lorasweep.operatorRules" -}}
- apiGroups: ["lorasweep.dev"]
  resources: ["lorasweeps"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["lorasweep.dev"]
  resources: ["lorasweeps/status"]
  verbs: ["patch"]
- apiGroups: ["lorasweep.dev"]
  resources: ["lorasweeps/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
- apiGroups: ["authentication.k8s.io"]
  resources: ["tokenreviews"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* The progress endpoint (spec.earlyStopping) is served in cluster mode: its TokenReviews are cluster-scoped. */}}
{{- define "lorasweep.progressEnabled" -}}
{{- if and .Values.earlyStopping.enabled (include "lorasweep.clusterMode" .) }}true{{- end }}
{{- end }}
