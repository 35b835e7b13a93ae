"""Deploying a chosen candidate on Ray Serve: the last step of the method, after the search.

- `choice`: what to serve: a run's best validated candidate (or `--commit`, or
  `--candidate`), with the knobs the re-measure found fastest through Serve.
- `config`: the Serve config for it, the file `serve deploy` takes and the dict
  `vibeserve deploy` runs, so the two cannot drift apart.
- `args`: what one replica serves (the config's `args`) and the import path configs name.
- `replica`: the Serve deployment, one replica holding the candidate's sandboxed engine
  process and checking the API key; `ingress`: the rest of what it adds in front of that
  process (SSE relayed in batches, its own errors and OpenAPI schema, metrics).
- `launch`: a config run on Ray (embedded, a cluster, or a head started for `--detach`).
- `remeasure`: the seed and the winner measured side by side through Serve when a search ends.
- `cli`: `vibeserve deploy`'s flags.

Data flows target -> search -> inner loop -> results -> deploy: this package reads the
search's results and run repository, and nothing below it imports it. The re-measure
lives here, not in `search/`: it deploys candidates exactly as `deploy` does, and
`deploy RUN` serves the knobs it chose; the command line runs it once the search has
returned, so the search never imports deploy. `serve/` keeps what every candidate
process runs (the OpenAI-compatible front); a replica starts that process through the
runner, as the evaluator does, so what was measured is what is served.
"""
