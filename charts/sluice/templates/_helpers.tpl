{{/*
Names. The fullname is the release name when it already contains the chart name, else
"<release>-sluice"; truncated to 63 characters (the DNS label limit).
*/}}
{{- define "sluice.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sluice.operator.fullname" -}}
{{- printf "%s-operator" (include "sluice.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.gateway.fullname" -}}
{{- printf "%s-gateway" (include "sluice.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "sluice.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sluice.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create -}}
{{- default (include "sluice.gateway.fullname" .) .Values.gateway.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.gateway.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "sluice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "operator"). */}}
{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference: (dict "image" .Values.images.operator "ctx" $). */}}
{{- define "sluice.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The operator's config file: operator.config with images.inferenceServer and images.engines.mlflow
filled in. Keys follow
operator/src/config.rs (OperatorConfig, camelCase, unknown keys refused by the operator).
*/}}
{{- define "sluice.operator.config" -}}
{{- $config := deepCopy .Values.operator.config -}}
{{- $images := default (dict) $config.images -}}
{{- if not $images.inferenceServer -}}
{{- $_ := set $images "inferenceServer" (include "sluice.image" (dict "image" .Values.images.inferenceServer "ctx" .)) -}}
{{- end -}}
{{- $engines := default (dict) $images.engines -}}
{{- if not $engines.mlflow -}}
{{- $_ := set $engines "mlflow" (include "sluice.image" (dict "image" .Values.images.mlflowRuntime "ctx" .)) -}}
{{- end -}}
{{- $_ := set $images "engines" $engines -}}
{{- $_ := set $config "images" $images -}}
{{- /* Entity pods take traffic from this release's gateways only (plus allowedNamespaces). */ -}}
{{- $policy := default (dict) $config.networkPolicy -}}
{{- if not $policy.gatewayNamespace -}}
{{- $_ := set $policy "gatewayNamespace" .Release.Namespace -}}
{{- end -}}
{{- if not $policy.gatewayLabels -}}
{{- $_ := set $policy "gatewayLabels" (include "sluice.selectorLabels" (dict "ctx" . "component" "gateway") | fromYaml) -}}
{{- end -}}
{{- $_ := set $config "networkPolicy" $policy -}}
{{- /* A registry mirror with credentials reads them where operator-deployment.yaml mounts them. */ -}}
{{- $mirrors := list -}}
{{- range (default (list) $config.registries) -}}
{{- $mirror := deepCopy . -}}
{{- range $.Values.operator.registryCredentials -}}
{{- if eq .mirror $mirror.name -}}
{{- $_ := set $mirror "credentialsDir" (printf "/var/run/secrets/sluice/registries/%s" .mirror) -}}
{{- end -}}
{{- end -}}
{{- $mirrors = append $mirrors $mirror -}}
{{- end -}}
{{- $_ := set $config "registries" $mirrors -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Restricted container security context (Pod Security Standard "restricted"). */}}
{{- define "sluice.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "sluice.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The downward-API variables every Sluice container gets. */}}
{{- define "sluice.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end -}}

{{/* A label selector string (k=v,k=v, keys sorted) from a label map. */}}
{{- define "sluice.selector" -}}
{{- $pairs := list -}}
{{- range $k, $v := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
