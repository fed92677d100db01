"""`qeff serve --ray --replicas N`: the same OpenAI-compatible app (`build_app`) as N Ray Serve replicas.

How it works. Each replica is a Ray actor (its own process) that runs the whole server of `qeff serve`: it builds
the FastAPI app of `QEfficient.serving.app.build_app` and loads the model (export and compile come from the
`$QEFF_HOME` cache after the first replica of a node has built them; the cache's file locks let the replicas of a
node share one build) in its constructor, so Ray routes requests to a replica only once its engine runs. The app is
Ray Serve's ingress (`@serve.ingress`): Ray's HTTP proxy takes the requests on `--host`/`--port` and hands each one
to the replica with the shorter queue, which answers it exactly as the single server does (streaming included).
Every response carries the header `X-QEff-Replica` with the id of the replica that served it. A replica reserves
`num_cpus` = `--threads` CPUs (default 1) and runs ONNX Runtime with that many threads; it takes up to
`--slots + --max-queued` requests, past which its own 429 answers apply. Its health check fails when its engine
has stopped, and Ray then replaces it; on teardown the app's lifespan shuts the engine down. `/metrics` is a
replica's own: each scrape lands on one replica.

On this machine:

    qeff serve --ray --replicas 2 --threads 4 --port 8000

starts a private local Ray instance (`ray.init`), runs Serve's HTTP proxy on 127.0.0.1:8000, waits until every
replica has loaded, prints the same ready message as `qeff serve`, and stops Serve and Ray on Ctrl-C (or SIGTERM).
Ray's logs stay out of the terminal: they are under `/tmp/ray/session_latest/logs` (replicas: `logs/serve/`).

On a multi-node Ray cluster (QEfficient and the model installed at the same paths on every node; each node keeps
its own `$QEFF_HOME` cache, so each node builds the program once):

    ray start --head --port 6379               # on the head node
    ray start --address HEAD_IP:6379           # on each worker node
    RAY_ADDRESS=HEAD_IP:6379 qeff serve --ray --replicas 8 --threads 4 --host 0.0.0.0

With `RAY_ADDRESS` set, `qeff serve --ray` connects to that cluster instead of starting one (without it, it never
joins a cluster that `ray start` runs on this machine), and on Ctrl-C deletes only its own application (`qeff`).
Ray Serve runs an HTTP proxy on the head node and on each node with a replica: any of their addresses serves.

From Python, `deployment(config, replicas)` is the bound application: `serve.run(deployment(ServeConfig(), 2))`.
For `serve run` / `serve deploy`, point a Serve config file at the application builder `app_builder`; its
arguments are the fields of `ServeConfig` plus `replicas` and `threads_per_replica`:

    applications:
      - name: qeff
        route_prefix: /
        import_path: QEfficient.serving.ray_app:app_builder
        args: {replicas: 4, threads_per_replica: 4, slots: 8, ctx_len: 2048, weights: int4}

    serve deploy qeff.yaml       # to a running cluster; or `serve run qeff.yaml`, which starts Ray itself
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

from QEfficient.serving.loading import ServeConfig, ServedModels, load_models
from QEfficient.serving.metrics import ServingMetrics

if TYPE_CHECKING:
    from ray.serve import Application

APP_NAME = "qeff"
DEPLOYMENT_NAME = "QEfficient"
REPLICA_HEADER = "X-QEff-Replica"  # on every response: the id of the replica that served it
_HEADER = REPLICA_HEADER.lower().encode()

Loader = Callable[[ServeConfig, ServingMetrics], ServedModels]

# The apps of this process's replicas, by deployment key. A Ray Serve replica is an actor of its own: one app.
_APPS: dict[str, tuple[Any, bytes]] = {}


class _ReplicaASGI:
    """The ASGI app `@serve.ingress` wraps: it forwards to the app its replica built, and names the replica.

    Ray Serve copies (pickles) the ingress app when the deployment is defined, before any replica exists; so this
    holds only a key, and each replica process registers its own app under it in its constructor."""

    def __init__(self, key: str) -> None:
        self.key = key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        app, replica = _APPS[self.key]
        if scope["type"] != "http":  # the lifespan: the app starts (and later shuts down) its engine
            return await app(scope, receive, send)

        async def named_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (_HEADER, replica)]}
            await send(message)

        await app(scope, receive, named_send)


def _once(loader: Loader) -> Loader:
    """`loader`, run once: the replica's constructor loads, and the app's lifespan then takes the same models."""
    loaded: list[ServedModels] = []

    def load(config: ServeConfig, metrics: ServingMetrics) -> ServedModels:
        if not loaded:
            loaded.append(loader(config, metrics))
        return loaded[0]

    return load


class QEffReplica:
    """One replica: the app of `build_app(config)`, its models loaded before the replica takes any request."""

    def __init__(self, config: ServeConfig, key: str) -> None:
        from ray import serve
        from ray.serve.exceptions import RayServeException

        from QEfficient.serving.app import build_app

        try:
            replica = serve.get_replica_context().replica_tag
        except RayServeException:  # not in a replica process (serve.run(..., _local_testing_mode=True))
            replica = uuid.uuid4().hex[:8]
        app = build_app(config, loader=_once(load_models))
        self._key, self._state = key, app.state.qeff
        self._state.load()  # synchronously: Ray marks the replica ready, and routes to it, once this returns
        if self._state.load_error is not None:
            raise RuntimeError(f"The model could not be loaded: {self._state.load_error}") from self._state.load_error
        _APPS[key] = (app, replica.encode())

    def check_health(self) -> None:
        """Ray Serve's periodic check: a replica whose engine has stopped is replaced."""
        models = self._state.models
        if models is None or not models.engine.alive:
            raise RuntimeError(f"The engine has stopped: {models.engine.error if models else 'no model'}")

    def __del__(self) -> None:
        # Ray runs the app's lifespan shutdown (which stops the engine) before this; stopping again is a no-op.
        state = getattr(self, "_state", None)
        if state is not None and state.models is not None:
            state.models.close()
        _APPS.pop(getattr(self, "_key", ""), None)


def deployment(config: ServeConfig, replicas: int = 1, threads_per_replica: int | None = None) -> Application:
    """The bound Ray Serve application: `replicas` copies of the app of `config`, for `serve.run` or a config file.

    Each replica reserves `threads_per_replica` CPUs (default: `config.threads`, else 1) and runs ONNX Runtime with
    that many threads."""
    from ray import serve

    if replicas < 1:
        raise ValueError(f"replicas must be at least 1; got {replicas}.")
    threads = threads_per_replica or config.threads or 1
    config = replace(config, threads=threads)
    key = uuid.uuid4().hex
    ingress = serve.ingress(_ReplicaASGI(key))(QEffReplica)
    return serve.deployment(
        ingress,
        name=DEPLOYMENT_NAME,
        num_replicas=replicas,
        ray_actor_options={"num_cpus": threads},
        # Up to the app's own limits: running rows plus its waiting queue; past that the replica answers 429.
        max_ongoing_requests=config.slots + config.max_queued,
    ).bind(config, key)


def app_builder(args: dict[str, Any]) -> Application:
    """Ray Serve application builder (`import_path: QEfficient.serving.ray_app:app_builder` in a config file).

    `args`: fields of `ServeConfig` (model, weights, slots, ctx_len, threads, ...) plus `replicas` (default 1) and
    `threads_per_replica`."""
    args = dict(args or {})
    replicas = int(args.pop("replicas", 1))
    threads = args.pop("threads_per_replica", None)
    known = {f.name for f in fields(ServeConfig)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"Unknown argument(s) {', '.join(unknown)}; expected replicas, threads_per_replica or "
                         f"fields of ServeConfig: {', '.join(sorted(known))}.")  # fmt: skip
    from pydantic import TypeAdapter

    config = TypeAdapter(ServeConfig).validate_python(args)  # `serve run ... slots=4` passes strings: convert
    return deployment(config, replicas, int(threads) if threads else None)


class _NoAuthNotice(logging.Filter):
    """Drops Ray's notice that a new local instance uses token authentication (its default); keeps other warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


def _get(url: str, api_key: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return 0, b""


def _served_name(url: str, config: ServeConfig, wait_s: float = 60.0) -> str | None:
    """The model's name from the running app, once its proxy answers `/health` with 200; None if it does not."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if _get(f"{url}/health")[0] == 200:
            status, body = _get(f"{url}/v1/models", config.api_key)
            if status == 200:
                return json.loads(body)["data"][0]["id"]
        time.sleep(0.5)
    return None


def run_ray_serve(config: ServeConfig, replicas: int, host: str, port: int, url: str) -> int:
    """`qeff serve --ray`: run `replicas` replicas on a local Ray (or the cluster at `$RAY_ADDRESS`) until Ctrl-C."""
    try:
        import ray
        from ray import serve
    except ImportError:
        print("error: --ray needs Ray Serve: pip install 'qefficient[ray]'", file=sys.stderr)
        return 1
    from QEfficient.cli.serve import ready_message

    threads = config.threads or 1
    address = os.environ.get("RAY_ADDRESS") or None
    where = f"the Ray cluster at {address}" if address else "a local Ray instance"
    print(f"Loading {config.model or 'SmolLM2-135M-Instruct'} ({config.weights}, {config.slots} slots, ctx_len "
          f"{config.ctx_len}) on {replicas} Ray Serve replica(s) of {threads} CPU(s) each, on {where}; "
          f"{url} answers once all are loaded", flush=True)  # fmt: skip
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **quiet)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats banner (nor upload) for a local run
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_NoAuthNotice())
        ray.init(address="local", include_dashboard=False, **quiet)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops as Ctrl-C does, loading or serving
    started = False
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        if not address and cpus < replicas * threads:
            print(f"error: {replicas} replica(s) of {threads} CPU(s) need {replicas * threads} CPUs; this machine has "
                  f"{cpus:g}. Lower --replicas or --threads, or start Ray yourself (ray start --head --num-cpus N) "
                  "and set RAY_ADDRESS.", file=sys.stderr, flush=True)  # fmt: skip
            return 1
        serve.start(http_options={"host": host, "port": port})
        started = True
        try:
            serve.run(deployment(config, replicas), name=APP_NAME, route_prefix="/")  # returns once all are loaded
        except Exception as exc:  # noqa: BLE001 - a replica's load error, or Serve's: reported, then shut down
            print(f"error: the Ray Serve application did not start: {_deploy_error(serve, exc)}", file=sys.stderr,
                  flush=True)  # fmt: skip
            return 1
        name = _served_name(url, config)
        if name is None:
            print(f"warning: the replicas are running, but {url}/health does not answer 200.", file=sys.stderr)
            name = config.served_model_name or "the model"
        print(ready_message(url, name, config.api_key), flush=True)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            if started:
                print("Shutting down the Ray Serve replicas", flush=True)
                serve.delete(APP_NAME)  # drains the replicas; each one's lifespan then stops its engine
        finally:
            ray.shutdown()  # a local instance ends here (Serve's controller and proxy with it); a cluster stays


def _deploy_error(serve: Any, exc: Exception) -> str:
    """Why the deployment failed: the last line of each failed replica's error (the load error), else `exc`."""
    try:
        app = serve.status().applications.get(APP_NAME)
        messages = [d.message for d in app.deployments.values() if d.message] if app else []
    except Exception:  # noqa: BLE001 - only the message is at stake
        messages = []
    return "; ".join(m.strip().splitlines()[-1] for m in messages if m.strip()) or str(exc)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
