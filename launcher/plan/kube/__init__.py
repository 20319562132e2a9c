"""Kubernetes LeaderWorkerSet manifests to and from deployment files, as pure functions.

`shell` evaluates a container's command line the way kubelet and the container's shell would, for one
rank; `pods` reads a pod template into what the launcher can express; `importer` turns manifests into
a deployment file's data; `exporter` turns a plan into manifests. No I/O here: `commands/import_` and
`commands/export` read and write the files.
"""
