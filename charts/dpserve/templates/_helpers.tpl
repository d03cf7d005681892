{{/*
Names. The full name is cut at 52 characters so that the longest suffix ("-standby",
"-metrics") still fits the 63-character DNS label limit.
*/}}
{{- define "dpserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "dpserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dpserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Recommended labels (app.kubernetes.io/*). */}}
{{- define "dpserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dpserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The selector labels as k=v,k=v (DPSERVE_OPERATOR_POD_LABELS). */}}
{{- define "dpserve.selectorLabelList" -}}
{{- $labels := include "dpserve.selectorLabels" . | fromYaml }}
{{- $pairs := list }}
{{- range $key := keys $labels | sortAlpha }}
{{- $pairs = append $pairs (printf "%s=%s" $key (index $labels $key)) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{- define "dpserve.labels" -}}
helm.sh/chart: {{ include "dpserve.chart" . }}
{{ include "dpserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: dpserve
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "dpserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dpserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image: repository:tag, or repository@digest when a digest is given. */}}
{{- define "dpserve.imageRef" -}}
{{- $image := index . 0 }}
{{- $appVersion := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $appVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "dpserve.peeringName" -}}
{{- default (include "dpserve.fullname" .) .Values.standby.peeringName }}
{{- end }}

{{- define "dpserve.ledgerUrl" -}}
{{- default (printf "http://%s-ledger.%s.svc:8443" (include "dpserve.fullname" .) .Release.Namespace) .Values.ledgerUrl }}
{{- end }}

{{/*
RBAC rules on namespaced resources: bound cluster-wide (ClusterRole) or per watched namespace
(Role). Every verb is justified next to it.
*/}}
{{- define "dpserve.namespacedRules" -}}
# PrivateModels and PrivacyBudgets: Kopf lists and watches them (get/list/watch) and patches
# the objects themselves for its finalizer and handler-progress annotations (patch).
- apiGroups: [dpserve.io]
  resources: [privatemodels, privacybudgets]
  verbs: [get, list, watch, patch]
# Retrain: the operator creates the next PrivacyBudget (spec.retraining.nextBudget) that
# version N+1 spends; it never deletes a budget (the ledger is the audit trail).
- apiGroups: [dpserve.io]
  resources: [privacybudgets]
  verbs: [create]
# Status: controllers merge-patch conditions and phase (patch); the ledger replaces
# PrivacyBudget status with a resourceVersion precondition so no debit is ever lost (update).
- apiGroups: [dpserve.io]
  resources: [privatemodels/status, privacybudgets/status]
  verbs: [patch, update]
# Owned children of a PrivateModel, created/updated/deleted as their owner; watched so that
# readiness (Deployment) and completion (Job) changes trigger a reconcile.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps, serviceaccounts]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, update, patch, delete]
# Pods, read-only: crash-loop detection (Ready must not be True while containers restart) and
# the retraining Job's termination message (its σ, q, steps, ε).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
# Events on PrivateModels/PrivacyBudgets (BudgetLow, Exhausted, Retraining, ...); Kopf patches
# an Event to bump its count when the same one repeats.
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/* Rules on cluster-scoped resources: always a ClusterRole. */}}
{{- define "dpserve.clusterRules" -}}
# The ledger authenticates sidecars by their projected ServiceAccount token (TokenReview).
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
# Confidential profiles: the RuntimeClass a profile needs must exist, and (required: true)
# some node must carry the confidential-node label, before pods are created (fail closed).
- apiGroups: [node.k8s.io]
  resources: [runtimeclasses]
  verbs: [get, list]
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list]
# Kopf discovers the served resources from the CRDs and watches them to notice CRD upgrades.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- end }}
