{{/* The release's full name, at most 63 characters. */}}
{{- define "lantern.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lantern.labels" -}}
app.kubernetes.io/name: lantern-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "lantern.selectorLabels" -}}
app.kubernetes.io/name: lantern-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lantern.serviceAccountName" -}}
{{- default (include "lantern.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}
