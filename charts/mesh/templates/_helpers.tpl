{{/*
Chart name, truncated to the DNS label limit.
*/}}
{{- define "mesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name for release-wide objects (ServiceAccount, ConfigMap, Secret, policies).
The release name alone when it already contains the chart name.
*/}}
{{- define "mesh.fullname" -}}
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

{{- define "mesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of a component's objects (Deployment, Service, HPA, PDB, NetworkPolicy).
Call with (dict "root" $ "name" "product").
serviceNaming=short: "product"; serviceNaming=prefixed: "<fullname>-product".
*/}}
{{- define "mesh.componentName" -}}
{{- if eq .root.Values.serviceNaming "prefixed" }}
{{- printf "%s-%s" (include "mesh.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- .name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Cluster DNS name of a component's Service. (dict "root" $ "name" "product")
*/}}
{{- define "mesh.serviceHost" -}}
{{- printf "%s.%s.svc.%s" (include "mesh.componentName" .) .root.Release.Namespace .root.Values.clusterDomain }}
{{- end }}

{{/*
UPPER_SNAKE form of a module name, as used in MESH_<SERVICE>_* variables.
*/}}
{{- define "mesh.envName" -}}
{{- . | replace "-" "_" | upper }}
{{- end }}

{{/*
Labels shared by every object of the release.
*/}}
{{- define "mesh.labels" -}}
helm.sh/chart: {{ include "mesh.chart" . }}
{{ include "mesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mesh
{{- end }}

{{/*
Selector labels that identify every pod of the release.
*/}}
{{- define "mesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of one component. (dict "root" $ "name" "product")
*/}}
{{- define "mesh.componentLabels" -}}
{{ include "mesh.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/*
Selector of one component's pods. (dict "root" $ "name" "product")
*/}}
{{- define "mesh.componentSelector" -}}
{{ include "mesh.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/*
The mesh image, pinned by digest when one is given, else by tag (default: appVersion).
*/}}
{{- define "mesh.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if eq $tag "latest" }}
{{- fail "image.tag must not be \"latest\": pin a version or a digest" }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "mesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mesh.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret holding database URL, Redis URL, JWT key (and the bundled Postgres password).
*/}}
{{- define "mesh.secretName" -}}
{{- default (include "mesh.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
Hook events of the migration Job. Bundled Postgres is a regular release object,
so it only exists after install: the Job then runs post-install.
*/}}
{{- define "mesh.migrationHook" -}}
{{- if .Values.migrations.hook }}
{{- .Values.migrations.hook }}
{{- else if .Values.postgresql.enabled }}
{{- "post-install,pre-upgrade" }}
{{- else }}
{{- "pre-install,pre-upgrade" }}
{{- end }}
{{- end }}

{{/*
Pod-level security context shared by the mesh pods.
*/}}
{{- define "mesh.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Container-level security context shared by every container of the release.
*/}}
{{- define "mesh.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . | default 65532 }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Data store environment of a mesh container. (dict "root" $ "postgres" bool "redis" bool ["secret" name])
Bundled Postgres: the URL is assembled by the kubelet from the password in the
Secret ($(POSTGRES_PASSWORD) expansion), so no URL with a password is rendered.
*/}}
{{- define "mesh.dataEnv" -}}
{{- $root := .root }}
{{- $secret := .secret | default (include "mesh.secretName" $root) }}
{{- if .postgres }}
{{- if $root.Values.postgresql.enabled }}
- name: POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $root.Values.secrets.keys.postgresPassword }}
- name: MESH_DATABASE_URL
  value: {{ printf "postgres://%s:$(POSTGRES_PASSWORD)@%s:5432/%s" $root.Values.postgresql.username (include "mesh.serviceHost" (dict "root" $root "name" "postgresql")) $root.Values.postgresql.database | quote }}
{{- else }}
- name: MESH_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $root.Values.secrets.keys.databaseUrl }}
{{- end }}
{{- end }}
{{- if .redis }}
{{- if $root.Values.redis.enabled }}
- name: MESH_REDIS_URL
  value: {{ printf "redis://%s:6379" (include "mesh.serviceHost" (dict "root" $root "name" "redis")) | quote }}
{{- else }}
- name: MESH_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $root.Values.secrets.keys.redisUrl }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Scheduling fields shared by the release's pods.
*/}}
{{- define "mesh.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Pool size (MESH_DATABASE_POOL_SIZE) of one service: its databasePoolSize, else
config.databasePoolSize. Call with (dict "root" $ "svc" $svc).
*/}}
{{- define "mesh.databasePoolSize" -}}
{{- $own := get .svc "databasePoolSize" }}
{{- if $own }}
{{- int $own }}
{{- else }}
{{- int .root.Values.config.databasePoolSize }}
{{- end }}
{{- end }}

{{/*
Most Postgres connections the release may open, as JSON:
{"services": n, "migrations": n, "reserved": 3, "total": n}.
Services: for every enabled service with postgres: true, its pool size times its
most pods (hpa.max when the HPA is on, else replicas). Migrations: the Job's
pool (config.databasePoolSize) when migrations are enabled. Reserved: the
server's superuser_reserved_connections default.
*/}}
{{- define "mesh.databaseConnections" -}}
{{- $root := . }}
{{- $services := 0 }}
{{- range $name, $svc := .Values.services }}
{{- if and $svc.enabled $svc.postgres }}
{{- $pods := ternary $svc.hpa.max $svc.replicas $svc.hpa.enabled | int }}
{{- $pool := include "mesh.databasePoolSize" (dict "root" $root "svc" $svc) | int }}
{{- $services = add $services (mul $pool $pods) }}
{{- end }}
{{- end }}
{{- $migrations := 0 }}
{{- if .Values.migrations.enabled }}
{{- $migrations = int .Values.config.databasePoolSize }}
{{- end }}
{{- $reserved := 3 }}
{{- dict "services" $services "migrations" $migrations "reserved" $reserved "total" (add $services $migrations $reserved) | toJson }}
{{- end }}

{{/*
Render-time guard of the bundled Postgres: fails when the connections the
release may open (mesh.databaseConnections) exceed postgresql.maxConnections.
*/}}
{{- define "mesh.checkDatabaseConnections" -}}
{{- $c := include "mesh.databaseConnections" . | fromJson }}
{{- $max := int .Values.postgresql.maxConnections }}
{{- if gt (int $c.total) $max }}
{{- fail (printf "postgresql.maxConnections (%d) is below the %d connections the release may open (services' pools at their most replicas %d, migration Job %d, reserved %d): raise postgresql.maxConnections or lower config.databasePoolSize / services.<name>.databasePoolSize" $max (int $c.total) (int $c.services) (int $c.migrations) (int $c.reserved)) }}
{{- end }}
{{- end }}

{{/*
The Secret with a service's mTLS certificate, key and CA (tls.crt, tls.key, ca.crt).
(dict "root" $ "name" "product")
*/}}
{{- define "mesh.tlsSecretName" -}}
{{- $prefix := .root.Values.tls.secretPrefix | default (printf "%s-tls-" (include "mesh.fullname" .root)) }}
{{- printf "%s%s" $prefix .name | trunc 253 }}
{{- end }}

{{/*
The mTLS identity of a module: <module>.<namespace>.svc (MESH_TLS_NAMESPACE is the pod's
namespace). (dict "root" $ "name" "product")
*/}}
{{- define "mesh.tlsIdentity" -}}
{{- printf "%s.%s.svc" .name .root.Release.Namespace }}
{{- end }}
