"""The deployment file: its schema (`schema`), how it is read and checked (`load`, `yamlfile`,
`interpolate`). The first layer: it imports nothing of the launcher but `errors`."""
