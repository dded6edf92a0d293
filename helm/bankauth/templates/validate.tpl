{{/*
Refuses values that would render a release bankauth cannot run as intended.
Included from the Deployment, so every render checks them.
*/}}
{{- define "bankauth.validate" -}}
{{- $v := .Values -}}
{{- if and (not $v.redis.enabled) (or $v.autoscaling.enabled (gt (int64 $v.replicaCount) 1)) -}}
{{- fail "more than one replica (replicaCount > 1 or autoscaling.enabled) needs redis.enabled: without Redis each replica caches on its own and InvalidateToken reaches only one" -}}
{{- end -}}
{{- if and $v.redis.enabled (not $v.redis.encryptionKeys) (not $v.config.cache.allow_plaintext) -}}
{{- fail "redis.encryptionKeys: token values in Redis are sealed; list at least one key id (its key is cache-key.<id> in the Secret), or for development only set config.cache.allow_plaintext" -}}
{{- end -}}
{{- if and $v.tls.enabled (not $v.tls.secretName) -}}
{{- fail "tls.secretName: the kubernetes.io/tls Secret with tls.crt and tls.key (and ca.crt with tls.clientCa)" -}}
{{- end -}}
{{- if and $v.tls.clientCa (not $v.tls.enabled) -}}
{{- fail "tls.clientCa needs tls.enabled" -}}
{{- end -}}
{{- range $name, $caller := $v.config.access.callers -}}
{{- if and $caller.client_cert_names (not $v.tls.clientCa) -}}
{{- fail (printf "config.access.callers.%s.client_cert_names needs tls.enabled and tls.clientCa" $name) -}}
{{- end -}}
{{- end -}}
{{- end }}
