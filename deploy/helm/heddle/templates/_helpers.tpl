{{/* Names, labels and the node group computations every template shares. */}}

{{- define "heddle.fullname" -}}
{{- if contains "heddle" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-heddle" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "heddle.labels" -}}
app.kubernetes.io/name: heddle
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "manager") */}}
{{- define "heddle.selectorLabels" -}}
app.kubernetes.io/name: heddle
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "heddle.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
Deep merge, in place: every key of .src is written into .dst; maps are merged key by key,
anything else (lists included) replaces the value. Unlike sprig's mergeOverwrite, false, 0
and null in .src win too, so an override can turn a default off.
*/}}
{{- define "heddle.deepMerge" -}}
{{- $dst := .dst -}}
{{- range $k, $v := .src -}}
{{- if and (kindIs "map" $v) (kindIs "map" (get $dst $k)) -}}
{{- include "heddle.deepMerge" (dict "dst" (get $dst $k) "src" $v) -}}
{{- else -}}
{{- $_ := set $dst $k $v -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A CPU list "2-5,8" as a list of integers. */}}
{{- define "heddle.cpuList" -}}
{{- $out := list -}}
{{- range (splitList "," (toString .)) -}}
{{- $part := trim . -}}
{{- if contains "-" $part -}}
{{- $ab := splitList "-" $part -}}
{{- $a := atoi (index $ab 0) -}}
{{- $b := atoi (index $ab 1) -}}
{{- if lt $b $a -}}
{{- fail (printf "cores: CPU range %s runs backwards: write it low-high" $part) -}}
{{- end -}}
{{- range (untilStep $a (int (add1 $b)) 1) -}}
{{- $out = append $out . -}}
{{- end -}}
{{- else -}}
{{- $out = append $out (atoi $part) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
The node group's switch config as a dict, in JSON: values `switch:` deep-merged with the
group's `switch:`, cores.pmd written as the switch reads it, hugepages from the kubelet.
(dict "root" $ "group" $group)
*/}}
{{- define "heddle.switchConfig" -}}
{{- $cfg := deepCopy .root.Values.switch -}}
{{- include "heddle.deepMerge" (dict "dst" $cfg "src" (deepCopy (.group.switch | default dict))) -}}
{{- $cores := $cfg.cores | default dict -}}
{{- $pmd := $cores.pmd -}}
{{- if and (kindIs "string" $pmd) (ne $pmd "auto") -}}
{{- $_ := set $cores "pmd" (include "heddle.cpuList" $pmd | fromJsonArray) -}}
{{- end -}}
{{- $_ := set $cfg "cores" $cores -}}
{{- $mem := $cfg.memory | default dict -}}
{{- $_ := set $mem "reserve" false -}}
{{- if not $mem.no_huge -}}
{{- $_ := set $mem "huge_dir" "/dev/hugepages" -}}
{{- end -}}
{{- $_ := set $cfg "memory" $mem -}}
{{- toJson $cfg -}}
{{- end -}}

{{/* The group's device plugin config as a dict, in JSON. (dict "root" $ "group" $group) */}}
{{- define "heddle.devicePluginConfig" -}}
{{- $cfg := deepCopy .root.Values.devicePlugin -}}
{{- include "heddle.deepMerge" (dict "dst" $cfg "src" (deepCopy (.group.devicePlugin | default dict))) -}}
{{- toJson $cfg -}}
{{- end -}}

{{/* Whole CPUs of the switch container. (dict "root" $ "group" $group "config" $switchConfig) */}}
{{- define "heddle.switchCpus" -}}
{{- $pmd := .config.cores.pmd -}}
{{- $explicit := .group.cpus | default .root.Values.node.cpus -}}
{{- $need := 0 -}}
{{- if kindIs "slice" $pmd -}}
{{- $need = add1 (len $pmd) -}}
{{- else if kindIs "string" $pmd -}}
{{- if not $explicit -}}
{{- fail (printf "node group %q: cores.pmd is \"auto\": set nodeGroups[].cpus (or node.cpus) to the switch container's whole CPUs, PMD workers + 1 control CPU" .group.name) -}}
{{- end -}}
{{- $need = 2 -}}
{{- else -}}
{{- $need = add1 (int $pmd) -}}
{{- end -}}
{{- if $explicit -}}
{{- if lt (int $explicit) (int $need) -}}
{{- fail (printf "node group %q: cpus %d is too few for cores.pmd (%d PMD CPUs + 1 control CPU): raise cpus to %d or lower cores.pmd" .group.name (int $explicit) (sub $need 1) $need) -}}
{{- end -}}
{{- int $explicit -}}
{{- else -}}
{{- $need -}}
{{- end -}}
{{- end -}}

{{/*
Hugepages the switch asks the kubelet for, as JSON {"size": "2Mi", "mib": 512}; mib is 0
with memory.no_huge. Each NUMA node's share is rounded up to whole pages, as the switch does.
*/}}
{{- define "heddle.hugepages" -}}
{{- $mem := .memory -}}
{{- $size := "2Mi" -}}
{{- $pageMib := 2 -}}
{{- if regexMatch "^(?i)1g" (toString $mem.page_size) -}}
{{- $size = "1Gi" -}}
{{- $pageMib = 1024 -}}
{{- end -}}
{{- $total := 0 -}}
{{- if not $mem.no_huge -}}
{{- range ($mem.socket_mem_mb | default (list 256)) -}}
{{- $total = add $total (mul (div (add (int .) (sub $pageMib 1)) $pageMib) $pageMib) -}}
{{- end -}}
{{- end -}}
{{- toJson (dict "size" $size "mib" $total) -}}
{{- end -}}

{{/* Whether the switch container runs privileged. (dict "root" $ "group" $group "config" $switchConfig) */}}
{{- define "heddle.switchPrivileged" -}}
{{- $p := .root.Values.node.privileged -}}
{{- if hasKey .group "privileged" -}}{{- $p = .group.privileged -}}{{- end -}}
{{- if eq (toString $p) "auto" -}}
{{- $pci := false -}}
{{- range (.config.ports | default list) -}}
{{- if regexMatch "^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\\.[0-7]" .devargs -}}{{- $pci = true -}}{{- end -}}
{{- end -}}
{{- $pci -}}
{{- else -}}
{{- $p -}}
{{- end -}}
{{- end -}}

{{- define "heddle.webhookServiceName" -}}
{{- printf "%s-webhook" (include "heddle.fullname" .) -}}
{{- end -}}
