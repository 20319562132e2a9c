"""One module per verb (`up`, `down`, `status`, `logs`, `exec`, `doctor`, `watch`, `lock`, `migrate`,
`plan`), each with a `run` the CLI calls; what several verbs share: the deployment a command acts on
(`context`), operations on the nodes (`nodes`), health probes (`health`), waiting until ready
(`waiter`), the deployment lock (`locking`), and doctor's node checks (`preflight`)."""
