{{/*
Chart name, at most 63 characters.
*/}}
{{- define "shop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: "<release>-<chart>", or the release name alone when it already contains the chart
name. At most 63 characters (a DNS label).
*/}}
{{- define "shop.fullname" -}}
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

{{/*
"name-version" for the helm.sh/chart label.
*/}}
{{- define "shop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource. Argument: the root context.
*/}}
{{- define "shop.labels" -}}
helm.sh/chart: {{ include "shop.chart" . }}
app.kubernetes.io/name: {{ include "shop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shop
{{- with .Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Name of one service's resources: "<fullname>-<service>".
Argument: (dict "root" $ "name" <service>).
*/}}
{{- define "shop.componentName" -}}
{{- printf "%s-%s" (include "shop.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of one service. Argument: (dict "root" $ "name" <service>).
*/}}
{{- define "shop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shop.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/*
All labels of one service's resources. Argument: (dict "root" $ "name" <service>).
*/}}
{{- define "shop.componentLabels" -}}
{{ include "shop.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/*
Image reference of one service: "<registry>/<repository>:<tag>". Every service runs the same
image (infra/docker/Dockerfile holds every binary) unless it names its own repository.
Argument: (dict "root" $ "name" <service> "svc" <service values>).
*/}}
{{- define "shop.image" -}}
{{- $img := get .svc "image" | default dict }}
{{- $global := .root.Values.global.image }}
{{- $repository := get $img "repository" | default $global.repository | default "shop" }}
{{- $tag := get $img "tag" | default $global.tag | default .root.Chart.AppVersion | toString }}
{{- if $global.registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" $global.registry) $repository $tag }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/*
Name of the Secret the chart creates (when it has anything to hold).
*/}}
{{- define "shop.secretName" -}}
{{- printf "%s-secrets" (include "shop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of the shared ConfigMap.
*/}}
{{- define "shop.configMapName" -}}
{{- printf "%s-env" (include "shop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The container's command: services.<name>.command, or the service's binary in the image.
Argument: (dict "root" $ "name" <service> "svc" <service values>).
*/}}
{{- define "shop.command" -}}
{{- get .svc "command" | default (list (printf "/usr/local/bin/shop-%s" .name)) | toJson }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "shop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
`base` with every key that `over` sets replaced by over's value, maps merged key by key (YAML).
Unlike Sprig's merge/mergeOverwrite, an explicit false, 0 or "" in `over` wins: those treat such
values as empty and keep base's, which silently ignored e.g. services.<name>.relay.enabled=false.
Argument: (dict "base" <map> "over" <map>). Use: include "shop.overlay" (...) | fromYaml.
*/}}
{{- define "shop.overlay" -}}
{{- $out := deepCopy .base }}
{{- range $key, $value := .over }}
{{- if and (kindIs "map" $value) (kindIs "map" (get $out $key)) }}
{{- $_ := set $out $key (include "shop.overlay" (dict "base" (get $out $key) "over" $value) | fromYaml) }}
{{- else }}
{{- $_ := set $out $key $value }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
Whether a service is enabled: true unless its `enabled` is false.
Argument: <service values>. Renders "true" or "".
*/}}
{{- define "shop.enabled" -}}
{{- if or (not (hasKey . "enabled")) (get . "enabled") }}true{{ end }}
{{- end }}

{{/*
secretKeyRef (name + key) of the PostgreSQL password of one service, in order of precedence:
the service's own database.existingSecret, the service's own database.password (chart Secret,
key "<service>-password"), postgresql.auth.existingSecret, the chart Secret's
postgresql.auth.passwordKey. Argument: (dict "root" $ "name" <service> "svc" <service values>).
*/}}
{{- define "shop.dbPasswordRef" -}}
{{- $db := get .svc "database" | default dict }}
{{- $auth := .root.Values.postgresql.auth }}
{{- if get $db "existingSecret" }}
name: {{ get $db "existingSecret" }}
key: {{ get $db "passwordKey" | default $auth.passwordKey }}
{{- else if get $db "password" }}
name: {{ include "shop.secretName" .root }}
key: {{ printf "%s-password" .name }}
{{- else if $auth.existingSecret }}
name: {{ $auth.existingSecret }}
key: {{ $auth.passwordKey }}
{{- else }}
name: {{ include "shop.secretName" .root }}
key: {{ $auth.passwordKey }}
{{- end }}
{{- end }}

{{/*
The data of the chart-created Secret, one "key: base64" line per entry; empty when the chart
has nothing to store (everything comes from existing Secrets). Argument: the root context.
*/}}
{{- define "shop.secretData" -}}
{{- $root := . }}
{{- $auth := .Values.postgresql.auth }}
{{- $sharedPassword := false }}
{{- $storesInSecret := dict }}
{{- range $name, $svc := .Values.services }}
{{- if include "shop.enabled" $svc }}
{{- $db := get $svc "database" | default dict }}
{{- if $db }}
{{- if get $db "existingSecret" }}
{{- else if get $db "password" }}
{{ printf "%s-password" $name }}: {{ get $db "password" | toString | b64enc }}
{{- else if not $auth.existingSecret }}
{{- $sharedPassword = true }}
{{- end }}
{{- end }}
{{- range $store := (get $svc "stores" | default list) }}
{{- $cfg := get $root.Values.stores $store | default dict }}
{{- if and (get $cfg "urlInSecret") (not (get $cfg "existingSecret")) }}
{{- $_ := set $storesInSecret $store (get $cfg "url") }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if $sharedPassword }}
{{- if not $auth.password }}
{{- fail "postgresql.auth.password is empty: set it, or name an existing Secret in postgresql.auth.existingSecret" }}
{{- end }}
{{ $auth.passwordKey }}: {{ $auth.password | toString | b64enc }}
{{- end }}
{{- range $store, $url := $storesInSecret }}
{{- if not $url }}
{{- fail (printf "stores.%s.urlInSecret is true but stores.%s.url is empty" $store $store) }}
{{- end }}
{{ printf "%s-url" $store }}: {{ $url | toString | b64enc }}
{{- end }}
{{- end }}

{{/*
Environment of one service's container beyond the shared ConfigMap.
Argument: (dict "root" $ "name" <service> "svc" <service values>).
*/}}
{{- define "shop.serviceEnv" -}}
{{- $root := .root }}
{{- $svc := .svc }}
{{- $name := .name }}
- name: SHOP__SERVER__GRPC_PORT
  value: {{ required (printf "services.%s.grpcPort is required" $name) (get $svc "grpcPort") | int | quote }}
- name: SHOP__SERVER__METRICS_PORT
  value: {{ required (printf "services.%s.metricsPort is required" $name) (get $svc "metricsPort") | int | quote }}
{{- if hasKey $svc "shutdownGraceMs" }}
- name: SHOP__SERVER__SHUTDOWN_GRACE_MS
  value: {{ get $svc "shutdownGraceMs" | int | quote }}
{{- end }}
{{- $db := get $svc "database" | default dict }}
{{- if $db }}
{{- $pg := $root.Values.postgresql }}
{{- $user := get $db "username" | default $pg.auth.username }}
{{- $dbName := get $db "name" | default (printf "shop_%s" $name) }}
{{- $url := printf "postgres://%s@%s:%d/%s" $user (required "postgresql.host is required" $pg.host) ($pg.port | int) $dbName }}
{{- with $pg.options }}
{{- $url = printf "%s?%s" $url (trimPrefix "?" .) }}
{{- end }}
{{- $relay := include "shop.overlay" (dict "base" $root.Values.relay "over" (get $svc "relay" | default dict)) | fromYaml }}
# The driver (sqlx) takes the password from PGPASSWORD when the URL carries none.
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      {{- include "shop.dbPasswordRef" . | trim | nindent 6 }}
- name: SHOP__DATABASE__URL
  value: {{ $url | quote }}
- name: SHOP__DATABASE__MAX_CONNECTIONS
  value: {{ (ternary (get $db "maxConnections") $pg.maxConnections (hasKey $db "maxConnections")) | int | quote }}
- name: SHOP__DATABASE__CREATE_IF_MISSING
  value: {{ (ternary (get $db "createIfMissing") $pg.createIfMissing (hasKey $db "createIfMissing")) | toString | quote }}
- name: SHOP__RELAY__ENABLED
  value: {{ (ternary (get $relay "enabled") true (hasKey $relay "enabled")) | toString | quote }}
- name: SHOP__RELAY__BATCH_SIZE
  value: {{ get $relay "batchSize" | default 1000 | int | quote }}
{{- end }}
{{- range $store := (get $svc "stores" | default list) }}
{{- if not (hasKey $root.Values.stores $store) }}
{{- fail (printf "services.%s.stores names %q, which is not a key of stores (mongo, redis, search, clickhouse)" $name $store) }}
{{- end }}
{{- $cfg := get $root.Values.stores $store }}
- name: {{ printf "SHOP__%s__URL" (upper $store) }}
{{- if get $cfg "existingSecret" }}
  valueFrom:
    secretKeyRef:
      name: {{ get $cfg "existingSecret" }}
      key: {{ get $cfg "secretKey" | default "url" }}
{{- else if get $cfg "urlInSecret" }}
  valueFrom:
    secretKeyRef:
      name: {{ include "shop.secretName" $root }}
      key: {{ printf "%s-url" $store }}
{{- else }}
  value: {{ get $cfg "url" | toString | quote }}
{{- end }}
{{- end }}
{{- range $peer := (get $svc "peers" | default list) }}
{{- $peerSvc := get $root.Values.services $peer | default dict }}
{{- if not $peerSvc }}
{{- fail (printf "services.%s.peers names %q, which is not a service" $name $peer) }}
{{- end }}
- name: {{ printf "SHOP__%s_URL" (upper $peer) }}
  value: {{ printf "http://%s:%d" (include "shop.componentName" (dict "root" $root "name" $peer)) (get $peerSvc "grpcPort" | int) | quote }}
{{- end }}
{{- range $key, $value := (get $svc "env" | default dict) }}
- name: {{ $key }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- with $root.Values.global.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with (get $svc "extraEnv") }}
{{ toYaml . }}
{{- end }}
{{- end }}
