{{/*
Names and labels shared by every template. Cluster-scoped objects (ClusterRoles, the admission
policy) are named after the fullname, so one release per cluster is the supported layout: the
CRDs are cluster-wide anyway.
*/}}

{{- define "consumer-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release name alone when it already contains the chart name (`helm install consumer-operator`
gives `consumer-operator`), else `<release>-<chart>`; truncated to the 63 characters of a label.
*/}}
{{- define "consumer-operator.fullname" -}}
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

{{- define "consumer-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels that select the operator's pods; they never change across upgrades. */}}
{{- define "consumer-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "consumer-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Every object carries these, managed-by included (Helm needs it to adopt objects). */}}
{{- define "consumer-operator.labels" -}}
helm.sh/chart: {{ include "consumer-operator.chart" . }}
{{ include "consumer-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: stoa
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "consumer-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "consumer-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- $message := "serviceAccount.name is required when serviceAccount.create is false" }}
{{- required $message .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "consumer-operator.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Whether the operator runs leader election: `auto` turns it on when more than one replica runs, so
that exactly one of them reconciles.
*/}}
{{- define "consumer-operator.leaderElection" -}}
{{- $mode := toString .Values.leaderElection.enabled }}
{{- if eq $mode "auto" }}
{{- gt (int .Values.replicaCount) 1 }}
{{- else }}
{{- $mode }}
{{- end }}
{{- end }}

{{- define "consumer-operator.leaseName" -}}
{{- .Values.leaderElection.leaseName | default (include "consumer-operator.fullname" .) }}
{{- end }}

{{/* Where the mounted Secret and CA bundle appear in the container. */}}
{{- define "consumer-operator.adminCredentialsDir" -}}
/var/run/secrets/consumer-operator/keycloak-admin
{{- end }}

{{- define "consumer-operator.caBundleDir" -}}
/etc/consumer-operator/ca
{{- end }}

{{/* Whether a CA bundle is configured, from a ConfigMap or from a Secret. */}}
{{- define "consumer-operator.caBundle" -}}
{{- with .Values.keycloak.caBundle }}
{{- if or .configMap.name .secret.name }}true{{ end }}
{{- end }}
{{- end }}
