"""The embedded Ray a run starts on this machine, and how it starts and stops quickly.

`start_local_ray` starts a one-machine Ray cluster for one run, `local_ray` one
for several (a sweep, a reproduction, a benchmark, the tests), `stop_local_ray`
shuts it down. What a one-machine run does not use is not started (`_lean_head`),
the raylet retries its object store's socket every 50 ms instead of every second, and
the driver sees its node registered as soon as it is (`_prompt_registration`):
Ray's own start is most of a short run's fixed cost (DESIGN.md, "Emulated time").
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

STARTUP_CONCURRENCY = 8  # worker processes the embedded Ray starts at once (Ray's default: the cores)
RAYLET_CONNECT_RETRY = {"RAY_raylet_client_connect_timeout_milliseconds": "50",
                        "RAY_raylet_client_num_connect_attempts": "200"}
RAY_TOKEN_FILE = "~/.ray/auth_token"  # Ray 2.60's token for its dashboard and API (token authentication)


def start_local_ray(namespace: str, dashboard: bool = False, num_cpus: int | None = None,
                    dashboard_port: int = 8265, ray_metrics: bool = False) -> str | None:
    """Start the embedded one-machine Ray cluster livemig runs on.

    Token authentication stays on (Ray 2.60's default, the token kept in
    ~/.ray/auth_token; Ray prints a notice about it). Setting RAY_AUTH_MODE
    to "token" explicitly to silence that notice made ray.init fail here, so
    it is left unset. No usage statistics are sent (there is no network here).

    address="local" always starts a new cluster: without it, a RAY_ADDRESS in
    the environment or a cluster left by `ray start` would silently take the
    run over (and num_cpus then fails); another cluster is joined only with
    `--address`. The dashboard, when asked for, listens on 127.0.0.1 only;
    its address is returned (None without it). `ray_metrics`: Ray exports its
    own metrics (`ray_*`, for Prometheus and Grafana) even without the dashboard.
    """
    import ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A run's actors each need a worker process, and Ray starts as many at once as there are
    # cores: on 2 cores the quickstart's five came up in three waves. Starting them together
    # overlaps their waits (sockets, registration) with each other's imports.
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(STARTUP_CONCURRENCY))
    # The raylet connects to the object store it has just started, and a refused try is retried
    # after raylet_client_connect_timeout_milliseconds (Ray's default: 1000, 10 tries). The store
    # was up a few ms after the first try in about half of the starts here: those took 2.6-2.9 s
    # against 1.7-1.9 s. Retried every 50 ms, 200 times (the workers' and the driver's connections
    # to the raylet too): Ray's 10 s budget is kept.
    for name, value in RAYLET_CONNECT_RETRY.items():
        os.environ.setdefault(name, value)
    with keeping_sigterm_handler(), _prompt_registration(), \
            contextlib.nullcontext() if dashboard else _lean_head(minimal_agent=not ray_metrics):
        ctx = ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 2, namespace=namespace,
                       log_to_driver=False, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                       dashboard_port=dashboard_port, configure_logging=False,
                       # Ray starts its workers at niceness 15; the hosts' and links' timing is the
                       # emulation, so they run at the priority of the command that started them.
                       _system_config={"worker_niceness": 0})
    url = getattr(ctx, "dashboard_url", None)
    return f"http://{url}" if dashboard and url else None


@contextlib.contextmanager
def keeping_sigterm_handler():
    """ray.init replaces the driver's SIGTERM handler with one that exits at
    once; put back the caller's (the CLI's aborts cleanly and keeps the result,
    in a run, a sweep and a reproduction alike)."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and before is not None:
            signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def _lean_head(minimal_agent: bool):
    """Start Ray's head without what only its dashboard and its own metrics use.

    - Ray 2.60 starts its dashboard's head process even with include_dashboard=False
      (for its usage-statistics module alone, which livemig turns off) and waits for
      it to publish an address: not started, as on Ray's minimal install.
    - The autoscaler monitor: a one-machine cluster has nothing to scale (it feeds
      `ray status` and the dashboard): not started.
    - With `minimal_agent`, the node's dashboard agent starts as on a minimal install:
      without the modules that report node statistics and export Ray's metrics. The
      raylet waits for its agent before it registers, and the full agent's imports
      took 4-5 s of a loaded 2-core machine (Ray's start: 7.5 s against 2.9 s).

    On a quiet 2-core machine the first two cost 0.5-0.8 s of every run's start. Ray's
    private functions: if a Ray release renames them, nothing is skipped and the run
    is only slower. livemig's own metrics (--metrics-port) are its own exporter's.
    """
    try:
        import ray._private.utils as ray_utils
        from ray._private.node import Node
        saved = Node.start_api_server, Node.start_monitor, ray_utils.get_dashboard_dependency_error
    except (ImportError, AttributeError):
        yield
        return

    def no_api_server(self, **_):
        self._webui_url = None

    Node.start_api_server, Node.start_monitor = no_api_server, lambda self: None
    if minimal_agent:
        ray_utils.get_dashboard_dependency_error = lambda: "livemig: neither the dashboard nor Ray's metrics asked for"
    try:
        yield
    finally:
        Node.start_api_server, Node.start_monitor, ray_utils.get_dashboard_dependency_error = saved


REGISTRATION_POLL_S = 0.02  # how often the driver asks the GCS whether its raylet has registered
RAYLET_START_WAIT_S = 30  # how long Ray waits for it (node.py's raylet_start_wait_time_s)


@contextlib.contextmanager
def _prompt_registration():
    """Let ray.init go on as soon as its raylet has registered with the GCS.

    ray.init asks the GCS for its new node once (`services.get_node`), and the GCS
    client behind that call retries once a second: the raylet, which waits for its
    agents (about 1 s of imports), registered a few milliseconds to 1 s before the
    driver saw it, so Ray's start took 1.6 or 2.6 s on a quiet 2-core machine, never
    in between. Here the driver polls the GCS's node table every 20 ms first, then
    makes Ray's own call, which then answers at once. Ray's private function: if a
    Ray release renames it, or the GCS cannot be asked, Ray's own wait is used.
    """
    try:
        import ray._private.services as services
        from ray._raylet import GcsClient, NodeID
        from ray.core.generated.gcs_pb2 import GcsNodeInfo
        from ray.core.generated.gcs_service_pb2 import GetAllNodeInfoRequest
        saved = services.get_node
    except (ImportError, AttributeError):
        yield
        return

    def get_node(gcs_address, node_id):
        with contextlib.suppress(Exception):  # any trouble: Ray's own retries below
            client = GcsClient(address=gcs_address)
            mine = [GetAllNodeInfoRequest.NodeSelector(node_id=NodeID.from_hex(node_id).binary())]
            deadline = time.monotonic() + RAYLET_START_WAIT_S
            while not client.get_all_node_info(timeout=5, node_selectors=mine,
                                               state_filter=GcsNodeInfo.GcsNodeState.ALIVE):
                if time.monotonic() > deadline:
                    break
                time.sleep(REGISTRATION_POLL_S)
        return saved(gcs_address, node_id)

    services.get_node = get_node
    try:
        yield
    finally:
        services.get_node = saved


def stop_local_ray() -> None:
    """Shut Ray down, its autoscaler monitor first: the monitor ignores SIGTERM, and
    ray.shutdown waited a second for it each time (1.4 s against 0.4 s in all).
    It keeps no state a local run needs."""
    import ray
    node = getattr(ray._private.worker, "_global_node", None)
    for info in (node.all_processes.get("monitor", []) if node is not None and node.head else []):
        info.process.kill()
        info.process.wait(timeout=5)
    ray.shutdown()


@contextlib.contextmanager
def local_ray(namespace: str, num_cpus: int | None = None):
    """One embedded Ray for several runs (a sweep, a reproduction, a benchmark): the
    runner joins it instead of starting one per run; stopped when the block ends."""
    start_local_ray(namespace, num_cpus=num_cpus)
    try:
        yield
    finally:
        stop_local_ray()
