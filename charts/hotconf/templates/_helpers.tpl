{{- define "hotconf.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hotconf.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "hotconf.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "hotconf.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "hotconf.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hotconf.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "hotconf.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hotconf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hotconf.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "hotconf.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Leader election: "auto" means on with more than one replica. */}}
{{- define "hotconf.leaderElect" -}}
{{- $e := .Values.leaderElection.enabled -}}
{{- if .Values.sharding.controllerRing -}}
{{- else if or (eq (toString $e) "true") (and (eq (toString $e) "auto") (gt (int .Values.replicaCount) 1)) -}}
true
{{- end -}}
{{- end }}

{{- define "hotconf.pdb" -}}
{{- $e := .Values.podDisruptionBudget.enabled -}}
{{- if or (eq (toString $e) "true") (and (eq (toString $e) "auto") (gt (int .Values.replicaCount) 1)) -}}
true
{{- end -}}
{{- end }}

{{/* The rules the operator needs in every namespace it watches: exactly the verbs it uses. */}}
{{- define "hotconf.namespacedRules" -}}
- apiGroups: ["hotconf.dev"]
  resources: ["runtimeconfigs", "poolbudgets"]
  # watch the CRs; patch only removes a stale hotconf.dev/rollback-to annotation, and (sharded)
  # the shard and drain labels of an object the sharder moves away
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["hotconf.dev"]
  resources: ["runtimeconfigs/status", "poolbudgets/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  # projection by server-side apply (patch, and create for the first apply), clean-up of a
  # renamed target (delete)
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  # valuesFrom reads Secrets; sensitive values are projected into a Secret
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.rbac.workloads }}
# Restart targets: read them, and stamp their pod template by server-side apply.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "list", "patch"]
{{- end }}
{{- if .Values.rbac.consumers }}
# Consumer status: the agents' hotconf.dev/applied annotations and the health of the selected
# pods, from a watch.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
{{- end }}
{{- end }}
