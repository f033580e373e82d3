{{/*
Chart name, truncated to 63 characters (the DNS label limit of some name fields).
*/}}
{{- define "imds-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: <release>-<chart>, or <release> when the release name already
contains the chart name. Truncated to 63 characters.
*/}}
{{- define "imds-operator.fullname" -}}
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

{{/*
Chart name and version, as used by the helm.sh/chart label.
*/}}
{{- define "imds-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "imds-operator.labels" -}}
helm.sh/chart: {{ include "imds-operator.chart" . }}
{{ include "imds-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ (.Values.image.tag | default .Chart.AppVersion) | toString | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: imds-operator
{{- end }}

{{/*
Selector labels (immutable in a Deployment: never add to these).
*/}}
{{- define "imds-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imds-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount to use.
*/}}
{{- define "imds-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imds-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image reference: repository@digest when image.digest is set (the tag is then ignored),
else repository:tag (the tag defaults to the chart's appVersion).
*/}}
{{- define "imds-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
True ("true") when extraEnv defines AWS_REGION itself.
*/}}
{{- define "imds-operator.extraEnvHasRegion" -}}
{{- range .Values.extraEnv }}
{{- if eq (toString .name) "AWS_REGION" }}true{{ end }}
{{- end }}
{{- end }}

{{/*
Cross-field checks the JSON schema cannot express. Renders nothing; fails the render on error.
*/}}
{{- define "imds-operator.validate" -}}
{{- if and (not .Values.aws.region) (not (include "imds-operator.extraEnvHasRegion" .)) }}
{{- fail "aws.region is required: set it to the AWS region of the cluster's nodes, e.g. --set aws.region=us-east-1 (the operator cannot read the region from IMDS)" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicaCount is %d but leaderElection.enabled is false: replicas would reconcile the same nodes concurrently; enable leader election or set replicaCount to 1" (int .Values.replicaCount)) }}
{{- end }}
{{- if eq (int .Values.metrics.port) (int .Values.health.port) }}
{{- fail (printf "metrics.port and health.port are both %d: they must differ" (int .Values.metrics.port)) }}
{{- end }}
{{- end }}
