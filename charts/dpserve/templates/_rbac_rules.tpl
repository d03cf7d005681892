{{/*
GENERATED from dpserve.resources.access (the operator's table of what it reads, watches and
writes) by: python -m dpserve.resources.rbacrules --output charts/dpserve/templates/_rbac_rules.tpl
Do not edit: tests/chart/test_chart_rbac.py fails when this file and the table differ.
templates/rbac.yaml chooses which blocks go into the ClusterRole and the Roles.
*/}}

{{- define "dpserve.rbac.always.namespaced" -}}
# Kopf lists and watches PrivateModels and patches them for its finalizer and handler-progress
# annotations.
- apiGroups: [dpserve.io]
  resources: [privatemodels]
  verbs: [get, list, watch, patch]
# Kopf lists, watches and patches PrivacyBudgets as it does PrivateModels; a retrain creates
# the next budget (spec.retraining.nextBudget) that version N+1 spends. A budget is never
# deleted (the ledger is the audit trail).
- apiGroups: [dpserve.io]
  resources: [privacybudgets]
  verbs: [get, list, watch, patch, create]
# Kopf lists, watches and patches ErasureRequests (finalizer-free; handler-progress
# annotations); the operator never creates or deletes one (they are the record of what a
# person asked).
- apiGroups: [dpserve.io]
  resources: [erasurerequests]
  verbs: [get, list, watch, patch]
# Status: controllers merge-patch conditions and phase.
- apiGroups: [dpserve.io]
  resources: [privatemodels/status]
  verbs: [patch, update]
# Status: the erasure controller writes phase, progress, the version that removed the records
# and the completion time.
- apiGroups: [dpserve.io]
  resources: [erasurerequests/status]
  verbs: [patch, update]
# Status: the ledger replaces it with a resourceVersion precondition so no debit is ever lost
# (update); the budget controller merge-patches conditions (patch).
- apiGroups: [dpserve.io]
  resources: [privacybudgets/status]
  verbs: [patch, update]
# Owned serviceaccounts: the model pods' identity, which the ledger authenticates. Created,
# replaced and deleted as their PrivateModel's; watched (drift correction).
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, list, watch, create, update, patch, delete]
# Owned configmaps: the filter sidecar's configuration; the erased record ids every training
# Job excludes (<model>-erasure, written by the erasure controller). Created, replaced and
# deleted as their PrivateModel's; watched (drift correction).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, update, patch, delete]
# Owned services: the model's one endpoint (the sidecar's port). Created, replaced and deleted
# as their PrivateModel's; watched (drift correction).
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, update, patch, delete]
# Owned networkpolicies: model pods reach only the ledger (and DNS only when servingDnsEgress
# is set). Created, replaced and deleted as their PrivateModel's; watched (drift correction).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, update, patch, delete]
# Owned poddisruptionbudgets: kept while more than one replica serves; deleted at one.
# Created, replaced and deleted as their PrivateModel's; watched (drift correction).
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, update, patch, delete]
# Owned deployments: the serving pods; watched for availability. Created, replaced and deleted
# as their PrivateModel's; watched (drift correction).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, update, patch, delete]
# Owned jobs: one retraining Job per version; watched for completion. Created, replaced and
# deleted as their PrivateModel's; watched (drift correction).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, update, patch, delete]
# Pods, read-only: watched for crash loops (Ready must not be True while containers restart);
# the retraining Job's termination message (its sigma, q, steps, epsilon); the ledger reads a
# leasing pod (owner, labels, IPs) before it grants.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# The ledger follows a leasing pod's controller chain (pod -> ReplicaSet -> the model's
# Deployment) before it grants: the pod must be a serving pod of the model.
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [get]
# Events on PrivateModels/PrivacyBudgets (BudgetLow, Exhausted, Retraining, ...); Kopf patches
# an Event to bump its count when the same one repeats.
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{- define "dpserve.rbac.always.cluster" -}}
# The ledger authenticates sidecars by their projected ServiceAccount token.
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
# Confidential profiles: the RuntimeClass a profile needs must exist before pods are created
# (fail closed); watched so that a Blocked model is placed once it does.
- apiGroups: [node.k8s.io]
  resources: [runtimeclasses]
  verbs: [get, list, watch]
# Confidential profiles (required: true): some node must carry the confidential-node label;
# watched so that a Blocked model is placed once one does.
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
# Kopf discovers the served resources from the CRDs and watches them to notice CRD upgrades.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- end }}

{{- define "dpserve.rbac.namespacedMode.cluster" -}}
# Namespaced mode: Kopf lists and watches namespaces to resolve --namespace into the
# namespaces that exist (cluster-wide it does not).
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}

{{- define "dpserve.rbac.standby.cluster" -}}
# Peering (hot standby, cluster-wide): every replica publishes its keep-alive and priority in
# the ClusterKopfPeering's status (patch) and watches the others'.
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}

{{- define "dpserve.rbac.standby.namespaced" -}}
# Peering (hot standby, namespaced): one KopfPeering per watched namespace carries the
# replicas' keep-alives (patch); each replica watches it.
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}

{{- define "dpserve.rbac.operatorNamespace.namespaced" -}}
# The ledger's own Service, in the operator's namespace: serving pods have no DNS and reach
# the ledger by its ClusterIP, which the operator pins in their hostAliases.
- apiGroups: [""]
  resources: [services]
  verbs: [get]
{{- end }}
