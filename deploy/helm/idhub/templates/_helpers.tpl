{{/* Names, labels and the container settings shared by the Deployment and the migration Job. */}}

{{- define "idhub.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "idhub.fullname" -}}
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

{{- define "idhub.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "idhub.selectorLabels" -}}
app.kubernetes.io/name: {{ include "idhub.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "idhub.labels" -}}
helm.sh/chart: {{ include "idhub.chart" . }}
{{ include "idhub.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "idhub.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "idhub.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "idhub.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The Secret the chart creates from values (master key, database and Redis URLs given inline). */}}
{{- define "idhub.secretName" -}}
{{- printf "%s-secrets" (include "idhub.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Whether the chart creates that Secret: when any of the three is given as a value. */}}
{{- define "idhub.createSecret" -}}
{{- if or (and (not .Values.masterKey.existingSecret) .Values.masterKey.value) (and (not .Values.database.existingSecret) .Values.database.url) (and (not .Values.redis.existingSecret) .Values.redis.url) }}true{{- end }}
{{- end }}

{{/* Refuse to render without what idhub cannot guess; never fall back to a default key. */}}
{{- define "idhub.validate" -}}
{{- if not (regexMatch "^https://[^/]+" .Values.publicUrl) }}
{{- if eq .Values.environment "production" }}
{{- fail "publicUrl is required: the https address people and apps use (IDHUB_PUBLIC_URL), e.g. --set publicUrl=https://id.example.com" }}
{{- else if not .Values.publicUrl }}
{{- fail "publicUrl is required (IDHUB_PUBLIC_URL), e.g. --set publicUrl=https://id.example.com" }}
{{- end }}
{{- end }}
{{- if not (or .Values.masterKey.existingSecret .Values.masterKey.value) }}
{{- fail "a master key is required: set masterKey.existingSecret to a Secret holding it (recommended) or masterKey.value; generate one with python -c \"import base64,secrets;print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())\"" }}
{{- end }}
{{- if not (or .Values.database.existingSecret .Values.database.url) }}
{{- fail "a database is required: set database.existingSecret to a Secret holding IDHUB_DATABASE_URL, or database.url (postgresql+asyncpg://USER:PASSWORD@HOST:5432/DB)" }}
{{- end }}
{{- end }}

{{/* Environment of every idhub container (serving pods and the migration Job). */}}
{{- define "idhub.env" -}}
- name: IDHUB_ENVIRONMENT
  value: {{ .Values.environment | quote }}
- name: IDHUB_PUBLIC_URL
  value: {{ .Values.publicUrl | trimSuffix "/" | quote }}
- name: IDHUB_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: IDHUB_DATA_DIR
  value: /data
- name: IDHUB_MASTER_KEY_FILE
  value: /run/secrets/idhub/master-key
- name: IDHUB_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret | default (include "idhub.secretName" .) }}
      key: {{ ternary .Values.database.secretKey "database-url" (not (empty .Values.database.existingSecret)) }}
{{- if or .Values.redis.existingSecret .Values.redis.url }}
- name: IDHUB_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret | default (include "idhub.secretName" .) }}
      key: {{ ternary .Values.redis.secretKey "redis-url" (not (empty .Values.redis.existingSecret)) }}
{{- end }}
{{- with .Values.trustedProxies }}
- name: IDHUB_TRUSTED_PROXIES
  value: {{ toJson . | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The master key as a file (IDHUB_MASTER_KEY_FILE), readable by the pod's group only. */}}
{{- define "idhub.masterKeyVolume" -}}
- name: master-key
  secret:
    secretName: {{ .Values.masterKey.existingSecret | default (include "idhub.secretName" .) }}
    defaultMode: 0440
    items:
      - key: {{ ternary .Values.masterKey.secretKey "master-key" (not (empty .Values.masterKey.existingSecret)) }}
        path: master-key
{{- end }}
