{{/* Names. */}}
{{- define "palisade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "palisade.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "palisade.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "palisade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "palisade.selector" (list . "node") */}}
{{- define "palisade.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "palisade.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "palisade.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "palisade.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "palisade.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret behind one certificate: include "palisade.secretName" (list . "wss") */}}
{{- define "palisade.secretName" -}}
{{- $ := index . 0 -}}
{{- $key := index . 1 -}}
{{- $v := index $.Values.tls $key -}}
{{- default (printf "%s-%s" (include "palisade.fullname" $) (kebabcase $key)) $v.existingSecret -}}
{{- end -}}

{{- define "palisade.etcdSecretName" -}}
{{- default (printf "%s-etcd-client" (include "palisade.fullname" .)) .Values.etcd.tls.existingSecret -}}
{{- end -}}

{{- define "palisade.policySecretName" -}}
{{- default (printf "%s-policy" (include "palisade.fullname" .)) .Values.policy.existingSecret -}}
{{- end -}}

{{/* etcd client endpoints: the external ones, else the trial member's Service. */}}
{{- define "palisade.etcdEndpoints" -}}
{{- if .Values.etcd.endpoints -}}
{{- toJson .Values.etcd.endpoints -}}
{{- else if .Values.etcd.trial.enabled -}}
{{- $scheme := ternary "https" "http" .Values.etcd.tls.enabled -}}
{{- toJson (list (printf "%s://%s-etcd.%s.svc:%d" $scheme (include "palisade.fullname" .) .Release.Namespace (int .Values.etcd.trial.port))) -}}
{{- else -}}
{{- fail "etcd: set etcd.endpoints (external etcd) or etcd.trial.enabled=true" -}}
{{- end -}}
{{- end -}}

{{/* Role URIs (SPEC section 6). */}}
{{- define "palisade.roleURI" -}}
{{- $ := index . 0 -}}
{{- printf "spiffe://palisade/%s/%s" $.Values.cluster (index . 1) -}}
{{- end -}}

{{/* The OTEL_* environment of one component: include "palisade.otelEnv" (list . "palisade-node") */}}
{{- define "palisade.otelEnv" -}}
{{- $ := index . 0 -}}
{{- $o := $.Values.otel -}}
- name: OTEL_SERVICE_NAME
  value: {{ index . 1 | quote }}
{{- $attrs := list (printf "palisade.cluster=%s" $.Values.cluster) (printf "k8s.namespace.name=%s" $.Release.Namespace) "k8s.pod.name=$(POD_NAME)" }}
{{- range $k, $v := $o.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $k $v) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- with $o.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: grpc
{{- end }}
{{- with $o.tracesSampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ . | quote }}
{{- end }}
{{- with $o.tracesSamplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- if $o.metricExportIntervalMs }}
- name: OTEL_METRIC_EXPORT_INTERVAL
  value: {{ $o.metricExportIntervalMs | int | toString | quote }}
{{- end }}
{{- range $k, $v := $o.extraEnv }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{- define "palisade.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "palisade.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
