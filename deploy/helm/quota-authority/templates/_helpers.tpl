{{/* Names and labels, as `helm create` makes them. */}}
{{- define "quota-authority.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "quota-authority.fullname" -}}
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

{{/* The headless Service's name; 63 characters at most, like every Service's. */}}
{{- define "quota-authority.headlessName" -}}
{{- printf "%s-headless" (include "quota-authority.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/*
Labels that pick out the server's pods (the Deployment's selector, the Services', the
PodDisruptionBudget's), and not the migration Job's.
*/}}
{{- define "quota-authority.selectorLabels" -}}
{{- include "quota-authority.componentSelectorLabels" (dict "root" . "component" "server") }}
{{- end }}

{{- define "quota-authority.componentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "quota-authority.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The recommended app.kubernetes.io labels, on every object of the server. */}}
{{- define "quota-authority.labels" -}}
{{- include "quota-authority.componentLabels" (dict "root" . "component" "server") }}
{{- end }}

{{- define "quota-authority.componentLabels" -}}
{{ include "quota-authority.componentSelectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: quota-authority
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "quota-authority.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Where the mounted files are; the variables name the files in these folders. */}}
{{- define "quota-authority.policyDir" -}}/etc/quota-authority/policy{{- end }}
{{- define "quota-authority.callersDir" -}}/etc/quota-authority/callers{{- end }}
{{- define "quota-authority.tlsDir" -}}/etc/quota-authority/tls{{- end }}
{{- define "quota-authority.clientCADir" -}}/etc/quota-authority/client-ca{{- end }}
{{- define "quota-authority.policyFile" -}}policy.toml{{- end }}

{{/*
The choices without a default, made once, and made consistently: rendering stops with a
message naming the values to set. Checks only what the chart decides (what to mount, which
variables it sets itself); the server validates every setting's value at start.
*/}}
{{- define "quota-authority.checkValues" -}}
{{- if not .Values.database.existingSecret }}
{{- fail "database.existingSecret: name the Secret that holds the PostgreSQL URL (under database.key); the chart runs no embedded PostgreSQL" }}
{{- end }}
{{- $callers := .Values.auth.callers.existingSecret }}
{{- $open := .Values.auth.allowUnauthenticatedRemote }}
{{- if and (not $callers) (not $open) }}
{{- fail "auth: the server listens on 0.0.0.0 in a pod, which it refuses without authentication. Set auth.callers.existingSecret (a Secret holding the callers file), or auth.allowUnauthenticatedRemote=true to serve unauthenticated" }}
{{- end }}
{{- if and $callers $open }}
{{- fail "auth: choose one, auth.callers.existingSecret or auth.allowUnauthenticatedRemote=true, not both" }}
{{- end }}
{{- if and .Values.tls.clientCA.existingSecret (not .Values.tls.existingSecret) }}
{{- fail "tls.clientCA.existingSecret: mutual TLS needs the server's certificate too; set tls.existingSecret" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled: needs metrics.enabled=true, or there is nothing to scrape" }}
{{- end }}
{{- if and .Values.metrics.prometheusRule.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.prometheusRule.enabled: needs metrics.enabled=true, or the rules have nothing to read" }}
{{- end }}
{{- $owned := include "quota-authority.ownedEnv" . | fromYaml }}
{{- range $name, $value := .Values.env }}
{{- if hasKey $owned $name }}
{{- fail (printf "env.%s: the chart sets it from %s; set that instead" $name (get $owned $name)) }}
{{- end }}
{{- if not (or (kindIs "string" $value) (kindIs "bool" $value) (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "invalid" $value)) }}
{{- fail (printf "env.%s: expected a string, number or boolean, got %s" $name (kindOf $value)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Each variable the chart sets from its own values, with the values it comes from. */}}
{{- define "quota-authority.ownedEnv" -}}
QUOTA_AUTHORITY_LISTEN: grpcPort
QUOTA_AUTHORITY_DATABASE_URL: database.existingSecret
QUOTA_AUTHORITY_CONFIG: policy
QUOTA_AUTHORITY_CALLERS_FILE: auth.callers.existingSecret
QUOTA_AUTHORITY_ALLOW_UNAUTHENTICATED_REMOTE: auth.allowUnauthenticatedRemote
QUOTA_AUTHORITY_TLS_CERT_FILE: tls.existingSecret
QUOTA_AUTHORITY_TLS_KEY_FILE: tls.existingSecret
QUOTA_AUTHORITY_TLS_CLIENT_CA_FILE: tls.clientCA.existingSecret
QUOTA_AUTHORITY_METRICS_LISTEN: metrics.enabled and metrics.port
QUOTA_AUTHORITY_DRAIN_DELAY_S: shutdown.drainDelaySeconds
QUOTA_AUTHORITY_SHUTDOWN_GRACE_S: shutdown.graceSeconds
{{- end }}

{{/*
A database URL and the env map: what both the server and the migration Job get. .database
is the Secret to read the URL from (existingSecret, key).
*/}}
{{- define "quota-authority.commonEnv" -}}
- name: QUOTA_AUTHORITY_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .database.existingSecret }}
      key: {{ .database.key }}
{{- range $name, $value := .root.Values.env }}
{{- if not (kindIs "invalid" $value) }}
- name: {{ $name }}
  value: {{ include "quota-authority.setting" $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A value as a variable's text, as the server reads it: a string as it is, a number or a
boolean by toJson, which writes 1048576 where Helm's float64 prints 1.048576e+06.
*/}}
{{- define "quota-authority.setting" -}}
{{- kindIs "string" . | ternary . (toJson .) }}
{{- end }}

{{/* The server's environment: the common part, then what its mounts and values set. */}}
{{- define "quota-authority.serverEnv" -}}
{{ include "quota-authority.commonEnv" (dict "root" . "database" .Values.database) }}
- name: QUOTA_AUTHORITY_LISTEN
  value: "0.0.0.0:{{ .Values.grpcPort }}"
- name: QUOTA_AUTHORITY_DRAIN_DELAY_S
  value: {{ include "quota-authority.setting" .Values.shutdown.drainDelaySeconds | quote }}
- name: QUOTA_AUTHORITY_SHUTDOWN_GRACE_S
  value: {{ include "quota-authority.setting" .Values.shutdown.graceSeconds | quote }}
{{- if .Values.policy }}
- name: QUOTA_AUTHORITY_CONFIG
  value: {{ printf "%s/%s" (include "quota-authority.policyDir" .) (include "quota-authority.policyFile" .) | quote }}
{{- end }}
{{- if .Values.auth.callers.existingSecret }}
- name: QUOTA_AUTHORITY_CALLERS_FILE
  value: {{ printf "%s/%s" (include "quota-authority.callersDir" .) .Values.auth.callers.key | quote }}
{{- end }}
{{- /* Always written: the image's own default is "true" (it serves unauthenticated with
     nothing else set), so a chart with callers says "false" rather than inherit it. */}}
- name: QUOTA_AUTHORITY_ALLOW_UNAUTHENTICATED_REMOTE
  value: {{ ternary "false" "true" (not (empty .Values.auth.callers.existingSecret)) | quote }}
{{- if .Values.tls.existingSecret }}
- name: QUOTA_AUTHORITY_TLS_CERT_FILE
  value: {{ printf "%s/%s" (include "quota-authority.tlsDir" .) .Values.tls.certKey | quote }}
- name: QUOTA_AUTHORITY_TLS_KEY_FILE
  value: {{ printf "%s/%s" (include "quota-authority.tlsDir" .) .Values.tls.keyKey | quote }}
{{- end }}
{{- if .Values.tls.clientCA.existingSecret }}
- name: QUOTA_AUTHORITY_TLS_CLIENT_CA_FILE
  value: {{ printf "%s/%s" (include "quota-authority.clientCADir" .) .Values.tls.clientCA.key | quote }}
{{- end }}
{{- if .Values.metrics.enabled }}
- name: QUOTA_AUTHORITY_METRICS_LISTEN
  value: "0.0.0.0:{{ .Values.metrics.port }}"
{{- end }}
{{- end }}

{{/*
The pods' terminationGracePeriodSeconds, from the same values as the variables, so the two
cannot disagree: the preStop sleep, the drain and the grace, rounded up, and the margin.
*/}}
{{- define "quota-authority.terminationGracePeriodSeconds" -}}
{{- $s := .Values.shutdown }}
{{- $preStop := include "quota-authority.preStopSleepSeconds" . | float64 }}
{{- add (ceil (addf $preStop $s.drainDelaySeconds $s.graceSeconds)) $s.marginSeconds }}
{{- end }}

{{/* The preStop sleep in whole seconds (the sleep action takes no fractions); 0: none. */}}
{{- define "quota-authority.preStopSleepSeconds" -}}
{{- ceil .Values.shutdown.preStopSleepSeconds }}
{{- end }}

{{/*
A probe: the chart's handler with the timings of .probe, or .probe itself when it brings a
handler of its own.
*/}}
{{- define "quota-authority.probe" -}}
{{- $own := false }}
{{- range $handler := list "exec" "grpc" "httpGet" "tcpSocket" }}
{{- if hasKey $.probe $handler }}{{ $own = true }}{{ end }}
{{- end }}
{{- if $own }}
{{- toYaml .probe }}
{{- else }}
{{- toYaml (merge (deepCopy .probe) .handler) }}
{{- end }}
{{- end }}

{{/* The restrictive container securityContext, the same for the server and the Job. */}}
{{- define "quota-authority.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "quota-authority.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsGroup }}
fsGroup: {{ .Values.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}
