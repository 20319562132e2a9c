"""The verbs, one module each, named as the CLI names them (`import_` for `import`): `plan`, `up`,
`scale`, `status`, `logs`, `exec`, `down`, `lock`, `watch`, `top`, `collect`, `doctor`, `migrate`,
`bench`, `import_`, `export`, `image`, `stage`; each has a `run` the CLI calls. What several verbs share
is in `launcher.operations`; a verb imports no other verb (`scale` returns the file that the CLI then
hands to `up`)."""
