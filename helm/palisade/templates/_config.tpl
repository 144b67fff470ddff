{{/* node.toml: crates/node/src/config.rs. Paths are where the Deployment mounts the files. */}}
{{- define "palisade.nodeToml" -}}
{{- $n := .Values.node -}}
{{- $e := .Values.etcd -}}
# Palisade node configuration, rendered by the Helm chart. The pod sets PALISADE_NODE_ID
# (the pod name) and, with node.listenOnPodIP, PALISADE_WSS_ADDR and PALISADE_CONTROL_ADDR.
cluster = {{ .Values.cluster | quote }}
policy_file = "/etc/palisade/policy/policy.yaml"
drain_deadline_seconds = {{ int $n.drainDeadlineSeconds }}
refusal_lane = {{ int $n.refusalLane }}
trusted_proxies = {{ toJson $n.trustedProxies }}

[listen]
wss = "0.0.0.0:{{ int $n.wssPort }}"
control = "0.0.0.0:{{ int $n.controlPort }}"

[tls]
mode = {{ $n.tlsMode | quote }}
{{- if eq $n.tlsMode "rustls" }}
cert = "/etc/palisade/wss/tls.crt"
key = "/etc/palisade/wss/tls.key"
{{- end }}
reload_interval_ms = {{ int $n.tlsReloadIntervalMs }}

[control]
cert = "/etc/palisade/control/tls.crt"
key = "/etc/palisade/control/tls.key"
ca = "/etc/palisade/control/ca.crt"

[etcd]
endpoints = {{ include "palisade.etcdEndpoints" . }}
lease_ttl_seconds = {{ int $e.leaseTtlSeconds }}
timeout_ms = {{ int $e.timeoutMs }}
{{- if $e.tls.enabled }}
ca = "/etc/palisade/etcd/ca.crt"
{{- if $e.tls.clientAuth }}
cert = "/etc/palisade/etcd/tls.crt"
key = "/etc/palisade/etcd/tls.key"
{{- end }}
{{- end }}
{{- with $n.labels }}

[etcd.labels]
{{- range $k, $v := . }}
{{ $k | quote }} = {{ $v | toString | quote }}
{{- end }}
{{- end }}
{{- range $i, $r := $n.routes }}

[[routes]]
path = {{ $r.path | quote }}
{{- if $r.echo }}
echo = true
{{- end }}
{{- with $r.upstream }}
upstream = {{ . | quote }}
{{- end }}
{{- if $r.upstreamCaSecret }}
upstream_ca = "/etc/palisade/upstream/{{ $i }}/ca.crt"
{{- end }}
{{- if hasKey $r "allowBinary" }}
allow_binary = {{ $r.allowBinary }}
{{- end }}
{{- if $r.schema }}
schema = "/etc/palisade/config/route-{{ $i }}.schema.json"
{{- end }}
{{- end }}
{{- end -}}

{{/* controller.toml: crates/controller/src/config.rs. */}}
{{- define "palisade.controllerToml" -}}
{{- $c := .Values.controller -}}
{{- $e := .Values.etcd -}}
# Palisade controller configuration, rendered by the Helm chart.
cluster = {{ .Values.cluster | quote }}
listen = "0.0.0.0:{{ int $c.port }}"
push_concurrency = {{ int $c.pushConcurrency }}
node_timeout_ms = {{ int $c.nodeTimeoutMs }}
# Nodes register their pod address; their one control certificate names the service.
node_server_name = "{{ include "palisade.fullname" . }}-node-control.{{ .Release.Namespace }}.svc"

# FleetControl server: its certificate, and the CA operator certificates chain to.
[tls]
cert = "/etc/palisade/controller/tls.crt"
key = "/etc/palisade/controller/tls.key"
ca = "/etc/palisade/controller/ca.crt"

# The controller's client identity towards the nodes, and the CA of their certificates.
[nodes_tls]
cert = "/etc/palisade/controller/tls.crt"
key = "/etc/palisade/controller/tls.key"
ca = "/etc/palisade/controller/ca.crt"

[etcd]
endpoints = {{ include "palisade.etcdEndpoints" . }}
timeout_ms = {{ int $e.timeoutMs }}
{{- if $e.tls.enabled }}
ca = "/etc/palisade/etcd/ca.crt"
{{- if $e.tls.clientAuth }}
cert = "/etc/palisade/etcd/tls.crt"
key = "/etc/palisade/etcd/tls.key"
{{- end }}
{{- end }}
{{- end -}}
