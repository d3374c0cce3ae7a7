{{/*
Every object of this chart is the object of the same name in deploy/kustomize (read through
the symlinks under files/) with this release's values applied, so the two install paths
cannot drift apart: a rule, volume or capability added there is here too.
*/}}

{{/*
The one document of kind (index . 2) in file (index . 1), as YAML; fails if there is none.
Usage: include "gracewatch.load" (list $ "base/rbac.yaml" "ClusterRole") | fromYaml
*/}}
{{- define "gracewatch.load" -}}
{{- $root := index . 0 }}
{{- $path := printf "files/%s" (index . 1) }}
{{- $kind := index . 2 }}
{{- $found := dict }}
{{- range $doc := regexSplit "(?m)^---[ \t]*$" ($root.Files.Get $path) -1 }}
{{- $obj := fromYaml $doc }}
{{- if eq (get $obj "kind" | toString) $kind }}
{{- $found = $obj }}
{{- end }}
{{- end }}
{{- if not $found }}
{{- fail (printf "%s has no %s: is the chart's files/ symlink to deploy/ intact?" $path $kind) }}
{{- end }}
{{- toYaml $found }}
{{- end }}

{{/* Labels of every object: the kustomize base's own plus Helm's and extraLabels. */}}
{{- define "gracewatch.labels" -}}
app.kubernetes.io/part-of: gracewatch
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.extraLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Sets the release namespace (on namespaced objects) and the chart's labels on an object
loaded with gracewatch.load. Usage: include "gracewatch.meta" (list $ $obj true)
*/}}
{{- define "gracewatch.meta" -}}
{{- $root := index . 0 }}
{{- $obj := index . 1 }}
{{- $namespaced := index . 2 }}
{{- $meta := $obj.metadata }}
{{- if $namespaced }}
{{- $_ := set $meta "namespace" $root.Release.Namespace }}
{{- end }}
{{- $labels := merge (include "gracewatch.labels" $root | fromYaml) ($meta.labels | default dict) }}
{{- $_ := set $meta "labels" $labels }}
{{- end }}
