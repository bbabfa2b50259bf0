{{/* The release's full name: the release name, unless it already contains the chart name. */}}
{{- define "kubechat.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubechat.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubechat.labels" -}}
{{ include "kubechat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kubechat.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "kubechat.fullname" .) -}}
{{- end -}}

{{- define "kubechat.peeringName" -}}
{{- .Values.peering.name | default (include "kubechat.fullname" .) -}}
{{- end -}}

{{/* Peering only with several replicas: a single replica runs standalone and needs no peering rights. */}}
{{- define "kubechat.peering" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end -}}
{{- end -}}

{{/* toString: `--set image.tag=1.2` would otherwise be a number. */}}
{{- define "kubechat.image" -}}
{{- printf "%s:%s" .repository (.tag | toString | default .appVersion) -}}
{{- end -}}

{{/*
The rules of the operator's role, the same for the ClusterRole and each namespaced Role (each rule is
explained in docs/install.md). `scope` is "cluster" or "namespace": peering objects differ.
*/}}
{{- define "kubechat.rules" -}}
{{- $root := .root -}}
# The bots: watched (nothing writes to them but their status: no annotations, no finalizers).
- apiGroups: [kubechat.dev]
  resources: [chatbots]
  verbs: [get, list, watch]
- apiGroups: [kubechat.dev]
  resources: [chatbots/status]
  verbs: [get, patch, update]
# The bots' children: written by server-side apply (create on first apply, patch after); watched so one
# edited or deleted by hand is put back. No delete: the garbage collector removes them with their bot.
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
# A bot's own ServiceAccount, rendered when its spec.access names serviceAccounts (see tokenreview.yaml):
# watched like the other children, and deleted when the spec no longer needs it.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, list, watch, create, patch, delete]
{{- if $root.Values.usage.interval }}
# status.usage: one list of the bots' pods per interval (label selector), to read each one's /metrics.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
{{- end }}
# Events on the bots (Applied, Restored, SecretNotFound, ...): Kopf 1.45 posts them to the core v1 API.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if $root.Values.rbac.secretExistenceCheck }}
# Only to report SecretNotFound when a Secret a bot names does not exist: the operator asks for the
# object's metadata alone (PartialObjectMetadata), never a value, and never lists or watches Secrets.
# RBAC cannot limit `get` to metadata, so rbac.secretExistenceCheck=false drops this rule; the operator
# then skips the check and the pods' readiness tells instead.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}
{{- if include "kubechat.peering" $root }}
# Kopf peering: replicas announce themselves in the peering object's status; one acts at a time.
- apiGroups: [kopf.dev]
  resources: [{{ if eq .scope "cluster" }}clusterkopfpeerings{{ else }}kopfpeerings{{ end }}]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}

{{/*
What Kopf 1.45 lists and watches besides the served resources (found by running the operator under this
chart's ServiceAccount): without these it retries each call nine times (about a minute, logging errors)
before falling back, and serves nothing meanwhile. CRDs: to notice the served resources appearing,
changing or going away. Namespaces: only when namespaced, to match the watched namespaces.
*/}}
{{- define "kubechat.discoveryRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if eq .scope "namespace" }}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end -}}
