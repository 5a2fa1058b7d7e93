{{/*
Names, labels and the few values derived in more than one template.
*/}}

{{- define "rolomesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name, plus the chart name unless the release name already contains it.
Object names append "-operator" etc., so keep room for the suffixes.
*/}}
{{- define "rolomesh.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rolomesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of this chart. */}}
{{- define "rolomesh.labels" -}}
helm.sh/chart: {{ include "rolomesh.chart" . }}
{{ include "rolomesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rolomesh
{{- end }}

{{- define "rolomesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rolomesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Operator objects: the labels above plus the component. */}}
{{- define "rolomesh.operator.labels" -}}
{{ include "rolomesh.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "rolomesh.operator.selectorLabels" -}}
{{ include "rolomesh.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "rolomesh.agent.labels" -}}
{{ include "rolomesh.labels" . }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "rolomesh.operator.name" -}}
{{- printf "%s-operator" (include "rolomesh.fullname" .) }}
{{- end }}

{{- define "rolomesh.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "rolomesh.operator.name" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image the operator runs and hands to the rolodex and agent pods (--image). */}}
{{- define "rolomesh.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Namespaces that hold the agent ServiceAccount, one per line. The operator's agent DaemonSets run in the
namespace of their MeshNetwork, so the account must exist there: the watched namespace when the operator watches
one, otherwise the release namespace plus agent.serviceAccount.namespaces.
*/}}
{{- define "rolomesh.agent.namespaces" -}}
{{- if .Values.operator.watchNamespace }}
{{- if .Values.agent.serviceAccount.namespaces }}
{{- fail "agent.serviceAccount.namespaces must be empty when operator.watchNamespace is set (agents then run only in the watched namespace)" }}
{{- end }}
{{- .Values.operator.watchNamespace }}
{{- else }}
{{- prepend .Values.agent.serviceAccount.namespaces .Release.Namespace | uniq | join "\n" }}
{{- end }}
{{- end }}

{{/* Checks of value combinations that the JSON schema cannot express. */}}
{{- define "rolomesh.validate" -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection) }}
{{- fail (printf "operator.replicas is %d but operator.leaderElection is false: replicas would reconcile (and allocate addresses) concurrently; enable leader election or use one replica" (int .Values.operator.replicas)) }}
{{- end }}
{{- end }}
