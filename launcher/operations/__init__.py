"""What the verbs share, between output and commands: the deployment a verb acts on (`context`), operations
on the nodes (`nodes`), health probes (`health`), waiting until ready (`waiter`), the deployment lock
(`locking`), the checks before `up` (`checks`, on each node's `preflight`; `fabric`, `fabric_run`,
`gpu_health`), what each service is doing (`service_status`), shipping files to nodes (`ship`), draining and
rolling replicas (`drain`, `roll`), the rank and alert watchers (`rank_progress`, `alert`), the benchmark's
client and recipes (`bench_client`, `bench_recipe`). Nothing here is a verb, and nothing here imports
`launcher.commands` (tests/pure/test_layers.py)."""
