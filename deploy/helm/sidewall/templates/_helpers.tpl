{{/* Labels of every object of the release. */}}
{{- define "sidewall.labels" -}}
app.kubernetes.io/name: sidewall
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The labels that select the daemon's pods. */}}
{{- define "sidewall.selectorLabels" -}}
app.kubernetes.io/name: sidewall
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The export file, refused unless it is under /run/sidewall (the root fs is read-only). */}}
{{- define "sidewall.exportFile" -}}
{{- $f := .Values.export.file -}}
{{- if and $f (not (hasPrefix "/run/sidewall/" (clean $f))) -}}
{{- fail (printf "export.file: %q is not under /run/sidewall/: the root filesystem is read-only and /run/sidewall is the only writable mount" $f) -}}
{{- end -}}
{{- $f -}}
{{- end }}
