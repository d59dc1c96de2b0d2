{{/*
The notification service's outbound channels (values `notification`): environment,
secret mounts and the NetworkPolicy egress for its SMTP relay and webhook receivers.
Secrets are mounted as files and read at every send, so a rotated Secret applies
without a restart (docs/security.md).
*/}}
{{- define "mesh.notification.dir" -}}/var/run/secrets/mesh/notification{{- end }}

{{/* Whether notification sends anything beyond its log (list items follow). */}}
{{- define "mesh.notification.outbound" -}}
{{- $n := .Values.notification -}}
{{- if or $n.smtp.url $n.webhook.secretName -}}true{{- end -}}
{{- end }}

{{- define "mesh.notification.env" }}
{{- $n := .Values.notification }}
{{- $dir := include "mesh.notification.dir" . }}
{{- with $n.smtp.url }}
- name: MESH_NOTIFICATION_SMTP_URL
  value: {{ . | quote }}
- name: MESH_NOTIFICATION_SMTP_TLS
  value: {{ $n.smtp.tls | quote }}
{{- end }}
{{- with $n.smtp.from }}
- name: MESH_NOTIFICATION_SMTP_FROM
  value: {{ . | quote }}
{{- end }}
{{- if $n.smtp.user }}
{{- if eq $n.smtp.tls "none" }}
{{- fail "notification.smtp.user: SMTP credentials are only sent over TLS; set notification.smtp.tls to starttls or implicit" }}
{{- end }}
- name: MESH_NOTIFICATION_SMTP_USER
  value: {{ $n.smtp.user | quote }}
- name: MESH_NOTIFICATION_SMTP_PASSWORD_FILE
  value: {{ printf "%s/smtp/password" $dir | quote }}
{{- end }}
{{- if $n.smtp.caSecret }}
- name: MESH_NOTIFICATION_SMTP_CA_FILE
  value: {{ printf "%s/smtp-ca/ca.crt" $dir | quote }}
{{- end }}
{{- with $n.webhook.url }}
{{- if not $n.webhook.secretName }}
{{- fail "notification.webhook.url needs notification.webhook.secretName (the key webhook bodies are signed with)" }}
{{- end }}
- name: MESH_NOTIFICATION_WEBHOOK_URL
  value: {{ . | quote }}
{{- end }}
{{- if $n.webhook.allowHttp }}
- name: MESH_NOTIFICATION_WEBHOOK_ALLOW_HTTP
  value: "true"
{{- end }}
{{- if $n.webhook.secretName }}
- name: MESH_NOTIFICATION_WEBHOOK_SECRET_FILE
  value: {{ printf "%s/webhook/webhook-secret" $dir | quote }}
{{- end }}
{{- if $n.webhook.caSecret }}
- name: MESH_NOTIFICATION_WEBHOOK_CA_FILE
  value: {{ printf "%s/webhook-ca/ca.crt" $dir | quote }}
{{- end }}
{{- end }}

{{/* (mount name, Secret name, key) of each secret notification reads. */}}
{{- define "mesh.notification.secrets" -}}
{{- $n := .Values.notification -}}
{{- $list := list -}}
{{- if $n.smtp.user -}}
{{- if not $n.smtp.passwordSecret -}}
{{- fail "notification.smtp.user needs notification.smtp.passwordSecret (a Secret with the key `password`)" -}}
{{- end -}}
{{- $list = append $list (list "smtp" $n.smtp.passwordSecret "password") -}}
{{- end -}}
{{- with $n.smtp.caSecret }}{{ $list = append $list (list "smtp-ca" . "ca.crt") }}{{ end -}}
{{- with $n.webhook.secretName }}{{ $list = append $list (list "webhook" . "webhook-secret") }}{{ end -}}
{{- with $n.webhook.caSecret }}{{ $list = append $list (list "webhook-ca" . "ca.crt") }}{{ end -}}
{{- toJson $list -}}
{{- end }}

{{- define "mesh.notification.volumeMounts" }}
{{- $dir := include "mesh.notification.dir" . }}
{{- range $s := include "mesh.notification.secrets" . | fromJsonArray }}
- name: {{ printf "notification-%s" (index $s 0) }}
  mountPath: {{ printf "%s/%s" $dir (index $s 0) }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "mesh.notification.volumes" }}
{{- range $s := include "mesh.notification.secrets" . | fromJsonArray }}
- name: {{ printf "notification-%s" (index $s 0) }}
  secret:
    secretName: {{ index $s 1 }}
    defaultMode: 0440
    items:
      - key: {{ index $s 2 }}
        path: {{ index $s 2 }}
{{- end }}
{{- end }}

{{/* Egress to the relay and webhook receivers (outside the release). */}}
{{- define "mesh.notification.egress" }}
{{- $e := .Values.notification.egress }}
{{- if and (include "mesh.notification.outbound" .) $e.ports }}
- {{- with $e.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    {{- range $port := $e.ports }}
    - protocol: TCP
      port: {{ $port }}
    {{- end }}
{{- end }}
{{- end }}
