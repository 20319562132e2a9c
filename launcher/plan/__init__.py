"""The plan: what runs where, computed from the validated config and touching nothing.

`types` (the plan's data), `build` (config -> plan, in steps), `nodes` (placement), `infra` (etcd,
NATS, frontend, router), `engines/` (one adapter per engine), `flagdrift` (SGLang flags across
versions), `readiness` (what "ready" means), `reconcile` (plan vs what the nodes run), `checks`.
"""
