{{/* Names and labels. */}}
{{- define "bankauth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bankauth.fullname" -}}
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

{{- define "bankauth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bankauth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bankauth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bankauth.labels" -}}
helm.sh/chart: {{ include "bankauth.chart" . }}
{{ include "bankauth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: auth
{{- end }}

{{- define "bankauth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bankauth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding keys, client secrets, cache keys and the Redis URL. */}}
{{- define "bankauth.secretName" -}}
{{- default (include "bankauth.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "bankauth.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Where Secret files are mounted. Each file is one key of the Secret, so the
paths in bankauth.toml are "<secretsDir>/<secret key>".
*/}}
{{- define "bankauth.secretsDir" -}}/etc/bankauth/secrets{{- end }}
{{- define "bankauth.tlsDir" -}}/etc/bankauth/tls{{- end }}
{{- define "bankauth.redisCaDir" -}}/etc/bankauth/redis-ca{{- end }}
{{- define "bankauth.otelCaDir" -}}/etc/bankauth/otel-ca{{- end }}
{{- define "bankauth.configDir" -}}/etc/bankauth/config{{- end }}

{{/*
How a provider authenticates, as bankauth decides it (config.rs,
ProviderConfig::client_auth): client_auth when set, else moneykit
client_secret_basic, else private_key_jwt.
*/}}
{{- define "bankauth.providerUsesKey" -}}
{{- $auth := .client_auth | default (ternary "client_secret_basic" "private_key_jwt" (eq (toString .kind) "moneykit")) -}}
{{- if eq $auth "private_key_jwt" }}true{{ end -}}
{{- end }}

{{/* The Secret key of a provider's credential: "<name>.private-key" or "<name>.client-secret". */}}
{{- define "bankauth.providerSecretKey" -}}
{{- if include "bankauth.providerUsesKey" .provider -}}
{{ .name }}.private-key
{{- else -}}
{{ .name }}.client-secret
{{- end -}}
{{- end }}

{{/*
One TOML value from a YAML value: strings as TOML basic strings (JSON string
escapes are valid TOML), whole numbers as integers (Helm reads every YAML
number as a float, and bankauth's integer keys refuse 15000.0), other numbers
as floats, booleans, and lists of those.
*/}}
{{- define "bankauth.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{ toJson $v }}
{{- else if kindIs "bool" $v -}}
{{ $v }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) -}}
{{ $v }}
{{- else if kindIs "float64" $v -}}
{{- if eq (floor $v) $v -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if kindIs "slice" $v -}}
[{{- range $i, $item := $v }}{{ if $i }}, {{ end }}{{ include "bankauth.tomlValue" $item }}{{ end -}}]
{{- else -}}
{{- fail (printf "bankauth.toml: cannot write %v (%s) as a TOML value" $v (kindOf $v)) -}}
{{- end -}}
{{- end }}

{{/* "key = value" lines for a flat map, keys sorted; null values are left out. */}}
{{- define "bankauth.tomlPairs" -}}
{{- range $key, $value := . }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ include "bankauth.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end }}

{{/* Whether Redis is configured. */}}
{{- define "bankauth.redis" -}}
{{- if .Values.redis.enabled }}true{{ end -}}
{{- end }}

{{/* Seconds the kubelet waits after starting termination: preStop + drain + margin. */}}
{{- define "bankauth.terminationGracePeriodSeconds" -}}
{{- $graceMs := int64 (default 20000 .Values.config.server.shutdown_grace_ms) -}}
{{- $drain := div (add $graceMs 999) 1000 -}}
{{- $minimum := add .Values.preStopSleepSeconds $drain 5 -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{ $minimum }}
{{- else if lt (int64 .Values.terminationGracePeriodSeconds) (int64 $minimum) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least preStopSleepSeconds + config.server.shutdown_grace_ms in seconds + 5 = %d, or in-flight RPCs are killed mid-drain" .Values.terminationGracePeriodSeconds $minimum) -}}
{{- else -}}
{{ int64 .Values.terminationGracePeriodSeconds }}
{{- end -}}
{{- end }}

{{/*
Labels of the `helm test` pod: not the selector labels, so neither the
Service, the PodDisruptionBudget nor the NetworkPolicy takes it for a replica.
*/}}
{{- define "bankauth.testLabels" -}}
helm.sh/chart: {{ include "bankauth.chart" . }}
app.kubernetes.io/name: {{ include "bankauth.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: test
{{- end }}

{{- define "bankauth.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "bankauth.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* PromQL label matchers for this release's series (prometheusRule.selector). */}}
{{- define "bankauth.metricSelector" -}}
{{- default (printf "namespace=%q,job=%q" .Release.Namespace (include "bankauth.fullname" .)) .Values.prometheusRule.selector -}}
{{- end }}
