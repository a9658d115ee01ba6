"""The command line, a front end like http/: `main` (the parser, check-config, invite, manifest,
recover), `serve`, `data` (store and failed: the offline tools on what the service keeps),
`admin` (aliases and decisions, through the admin API or offline) and `common` (the --config
option and loading)."""
