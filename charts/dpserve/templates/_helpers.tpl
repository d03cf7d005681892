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
{{- default (printf "https://%s-ledger.%s.svc:8443" (include "dpserve.fullname" .) .Release.Namespace) .Values.ledgerUrl }}
{{- end }}

{{/* The Secret holding the ledger's tls.crt, tls.key and ca.crt. */}}
{{- define "dpserve.ledgerTlsSecret" -}}
{{- if eq .Values.ledgerTls.mode "secret" }}{{ .Values.ledgerTls.secretName }}{{ else }}{{ printf "%s-ledger-tls" (include "dpserve.fullname" .) }}{{ end }}
{{- end }}
