"""``python -m extractive_qa.serve MODEL`` (``make serve MODEL=models:/NAME/1``): MLflow's own scoring server (its
``/invocations``, ``/ping``, ``/health``, ``/version``, the same request formats) on a logged or registered model,
bounded for a server other people can reach:

* a body over ``--max-body-mb`` (default 1 MB: about 300,000 Chinese characters of context) is refused with 413
  before it is read whole -- a 20 MB body used to take 2.95 GB and keep 2.1 GB after;
* a JSON body nested deeper than ``--max-depth`` (default 64; a scoring request needs 4) is refused with 400 -- one
  nested 100,000 deep was a 500 from the parser's recursion;
* a request that runs past MLflow's timeout (``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``, 60 s) is answered 504 by
  MLflow, and its prediction stops at the next batch of windows (the deadline travels with the request to the
  model), instead of running on for minutes after nobody waits for it.

Why not ``mlflow models serve``: it runs the same app under uvicorn with no way to bound a request's size or its
work. The app here is MLflow's (``mlflow.pyfunc.scoring_server.init``), only wrapped.
"""

from __future__ import annotations

import argparse

from .core.errors import run_cli


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m extractive_qa.serve`` (also read by the docs' test of every command)."""
    parser = argparse.ArgumentParser(prog="python -m extractive_qa.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--max-body-mb", type=float, default=1.0, help="larger bodies are refused (413)")
    parser.add_argument("--max-depth", type=int, default=64, help="deeper JSON nesting is refused (400)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    import uvicorn

    from .tracking.mlflow_server import refuse_taken_port

    refuse_taken_port(args.host, args.port, "PORT=", "make serve MODEL=... PORT=5002")
    from .tracking.serving import build_app

    app = build_app(args.model, int(args.max_body_mb * 2**20), args.max_depth)
    print(f"serving {args.model} on http://{args.host}:{args.port}/invocations (bodies up to {args.max_body_mb:g} MB)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    run_cli(main)
