{{/* Egress rule fragments shared by the NetworkPolicies (list items, indent them). */}}
{{- define "mesh.np.dnsEgress" }}
- to:
    {{- toYaml .Values.networkPolicy.dnsTo | nindent 4 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end }}
{{- define "mesh.np.postgresEgress" }}
- {{- if .Values.postgresql.enabled }}
  to:
    - podSelector:
        matchLabels:
          {{- include "mesh.componentSelector" (dict "root" . "name" "postgresql") | nindent 10 }}
  {{- else if .Values.networkPolicy.externalDataStoreTo }}
  to:
    {{- toYaml .Values.networkPolicy.externalDataStoreTo | nindent 4 }}
  {{- end }}
  ports:
    - protocol: TCP
      port: 5432
{{- end }}
{{- define "mesh.np.redisEgress" }}
- {{- if .Values.redis.enabled }}
  to:
    - podSelector:
        matchLabels:
          {{- include "mesh.componentSelector" (dict "root" . "name" "redis") | nindent 10 }}
  {{- else if .Values.networkPolicy.externalDataStoreTo }}
  to:
    {{- toYaml .Values.networkPolicy.externalDataStoreTo | nindent 4 }}
  {{- end }}
  ports:
    - protocol: TCP
      port: 6379
{{- end }}
{{- define "mesh.np.otlpEgress" }}
{{- if .Values.config.otlpEndpoint }}
- {{- with .Values.networkPolicy.otlpTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - protocol: TCP
      port: {{ .Values.networkPolicy.otlpPort }}
{{- end }}
{{- end }}
