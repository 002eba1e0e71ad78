{{/* Names, labels and the pieces every gradlab pod shares. */}}

{{- define "gradlab.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-gradlab, or the release name alone when it already contains the chart name. */}}
{{- define "gradlab.fullname" -}}
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

{{- define "gradlab.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels; pass (dict "root" $ "component" "api"). */}}
{{- define "gradlab.labels" -}}
helm.sh/chart: {{ include "gradlab.chart" .root }}
{{ include "gradlab.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: gradlab
{{- end }}

{{- define "gradlab.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gradlab.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "gradlab.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gradlab.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference; pass (dict "root" $ "image" .Values.image.api). */}}
{{- define "gradlab.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* The chart's own Secret (connection URLs, admin token). */}}
{{- define "gradlab.secretName" -}}
{{- printf "%s-connections" (include "gradlab.fullname" .) }}
{{- end }}

{{- define "gradlab.databaseSecret" -}}
{{- default (include "gradlab.secretName" .) .Values.database.existingSecret }}
{{- end }}

{{- define "gradlab.databaseSecretKey" -}}
{{- ternary .Values.database.existingSecretKey "database-url" (ne .Values.database.existingSecret "") }}
{{- end }}

{{- define "gradlab.brokerSecret" -}}
{{- default (include "gradlab.secretName" .) .Values.broker.existingSecret }}
{{- end }}

{{- define "gradlab.brokerSecretKey" -}}
{{- ternary .Values.broker.existingSecretKey "broker-url" (ne .Values.broker.existingSecret "") }}
{{- end }}

{{/* Whether the chart makes a Secret: some value is not in an existing Secret. */}}
{{- define "gradlab.ownsSecret" -}}
{{- if or (not .Values.database.existingSecret) (not .Values.broker.existingSecret) (and .Values.auth.adminToken (not .Values.auth.existingSecret)) }}true{{ end }}
{{- end }}

{{/* The environment of every gradlab container: settings, then the connection URLs. */}}
{{- define "gradlab.env" -}}
- name: GRADLAB_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if .Values.pgbouncer.enabled }}
      name: {{ include "gradlab.fullname" . }}-pgbouncer
      key: database-url
      {{- else }}
      name: {{ include "gradlab.databaseSecret" . }}
      key: {{ include "gradlab.databaseSecretKey" . }}
      {{- end }}
{{- if .Values.pgbouncer.enabled }}
- name: GRADLAB_DATABASE_POOLER
  value: pgbouncer
{{- end }}
- name: GRADLAB_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "gradlab.brokerSecret" . }}
      key: {{ include "gradlab.brokerSecretKey" . }}
{{- with .Values.checkpoints.s3CredentialsSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- end }}

{{- define "gradlab.envFrom" -}}
- configMapRef:
    name: {{ include "gradlab.fullname" . }}-settings
{{- end }}

{{/* Pod-level fields shared by every gradlab pod. */}}
{{- define "gradlab.podCommon" -}}
serviceAccountName: {{ include "gradlab.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Annotations that roll the pods when the settings or the chart's Secret change. */}}
{{- define "gradlab.checksums" -}}
checksum/settings: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}

{{/* The writable scratch space of a read-only container. */}}
{{- define "gradlab.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end }}

{{- define "gradlab.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Egress every gradlab pod needs: DNS, PostgreSQL, Redis (by port: they are external). */}}
{{- define "gradlab.baseEgress" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
- ports:
    - port: {{ .Values.networkPolicy.databasePort }}
      protocol: TCP
    {{- if .Values.pgbouncer.enabled }}
    - port: {{ .Values.pgbouncer.port }}
      protocol: TCP
    {{- end }}
    - port: {{ .Values.networkPolicy.brokerPort }}
      protocol: TCP
{{- with .Values.networkPolicy.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* database.url taken apart for PgBouncer: user, password, host, port, database. */}}
{{- define "gradlab.pgbouncerUpstream" -}}
{{- if .Values.database.existingSecret }}
{{- fail "pgbouncer.enabled needs database.url: the chart writes PgBouncer's configuration from it (database.existingSecret cannot be read at render time)" }}
{{- end }}
{{- $url := urlParse (.Values.database.url | replace "postgresql+psycopg://" "postgresql://") }}
{{- if contains "%" $url.userinfo }}
{{- fail "pgbouncer.enabled: a database.url password with %-escapes is not supported; choose one without" }}
{{- end }}
{{- $user := splitList ":" $url.userinfo }}
{{- $hostPort := splitList ":" $url.host }}
{{- $database := trimPrefix "/" $url.path }}
{{- if or (ne (len $user) 2) (not $database) }}
{{- fail "pgbouncer.enabled: database.url must be postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE" }}
{{- end }}
{{- toJson (dict "user" (index $user 0) "password" (index $user 1) "host" (index $hostPort 0) "port" (ternary (index $hostPort 1) "5432" (eq (len $hostPort) 2)) "database" $database "userinfo" $url.userinfo) }}
{{- end }}
