"""`bus up`, `bus deploy|apps|app|scale|delete` and the admin's `bus nodes|cordon|...|quota`.

Every request goes to the quota manager by RPC and every question to the placement leader;
the answer is printed as a table, or as JSON with ``--json``.
"""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from pydantic import ValidationError

from bus import addresses
from bus.abc import Service
from bus.defaults import (
    AUTH_PORT,
    BROKER_URL,
    GATEWAY_PORT,
    INFLUX_API,
    INFLUX_ORG,
    INFLUX_TOKEN,
    INFLUX_URL,
)
from bus.pages import every_app, every_node
from bus.rpc import RpcClient
from bus.service import run
from bus.tls import server_files
from idlecloud.cli._common import (
    Exit,
    JsonOption,
    NamespaceOption,
    UrlOption,
    console,
    describe,
    fail,
    print_json,
    table,
)
from idlecloud.cli.platform import CORE_SERVICES, wait_until_ready
from idlecloud.cli.session import ask, asking
from schemas import (
    UNLIMITED,
    AppsQuery,
    AppsReply,
    CordonRequest,
    DeleteRequest,
    DeployRequest,
    Message,
    Owner,
    QuotaSet,
    RequestResult,
    ScaleRequest,
)

__all__ = ["register"]

R = TypeVar("R", bound=Message)


def _request_id() -> str:
    return uuid.uuid4().hex[:16]


def _submit(url: str, owner: Owner, request: Message, as_json: bool, done: str) -> None:
    """Send a request to the quota manager; print its verdict; exit 1 if refused."""
    result = ask(url, owner, request, RequestResult)
    if as_json:
        print_json(result.model_dump(mode="json"))
    elif result.accepted:
        console.print(done, style="green")
    if not result.accepted:
        fail(f"refused: {result.reason}", Exit.REFUSED)


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    pairs = {}
    for value in values or []:
        key, sep, item = value.partition("=")
        if not sep or not key:
            fail(f"{what} {value!r} is not KEY=VALUE")
        pairs[key] = item
    return pairs


def deploy(
    app: Annotated[str | None, typer.Argument(help="The app's id (a DNS label).")] = None,
    image: Annotated[str | None, typer.Option(help="The image (or program) to run.")] = None,
    command: Annotated[
        list[str] | None, typer.Option(help="One argument of the command; repeat.")
    ] = None,
    replicas: Annotated[int, typer.Option(min=0)] = 1,
    cpu_millicores: Annotated[int, typer.Option(min=1, help="CPU per replica.")] = 1000,
    memory_mib: Annotated[int, typer.Option(min=4, help="Memory per replica.")] = 256,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE; repeat.")] = None,
    port: Annotated[
        list[int] | None, typer.Option(help="A port the app listens on; repeat.")
    ] = None,
    selector: Annotated[list[str] | None, typer.Option(help="Only PCs labelled KEY=VALUE.")] = None,
    file: Annotated[Path | None, typer.Option(help="A TOML file of these fields.")] = None,
    namespace: NamespaceOption = "default",
    url: UrlOption = BROKER_URL,
    as_json: JsonOption = False,
) -> None:
    """Create or replace an app: run REPLICAS copies of IMAGE within your quota."""
    fields: dict[str, Any] = {}
    if file is not None:
        try:
            fields = tomllib.loads(file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            fail(f"cannot read {file}: {error}")
    flags = {"app": app, "image": image, "command": tuple(command) if command else None}
    fields.update({key: value for key, value in flags.items() if value is not None})
    fields.setdefault("replicas", replicas)
    fields.setdefault("cpu_millicores", cpu_millicores)
    fields.setdefault("memory_mib", memory_mib)
    fields.setdefault("env", _pairs(env, "--env"))
    fields.setdefault("ports", tuple(port or ()))
    fields.setdefault("node_selector", _pairs(selector, "--selector"))
    for key in ("command", "ports"):
        if isinstance(fields.get(key), list):
            fields[key] = tuple(fields[key])
    try:
        request = DeployRequest(request_id=_request_id(), namespace=namespace, **fields)
    except ValidationError as error:
        fail(f"invalid deployment: {describe(error)}")
    owner = Owner.namespace(namespace)
    _submit(url, owner, request, as_json, f"{request.app}: {request.replicas} replicas admitted")


def _apps(url: str, namespace: str, app: str | None) -> AppsReply:
    AppsQuery(namespace=namespace, app=app)  # a name that cannot be asked for ends it here

    def pages(client: RpcClient) -> Awaitable[AppsReply]:
        return every_app(lambda page: client.call(page, AppsReply, timeout_s=15.0), namespace, app)

    return asking(url, Owner.namespace(namespace), "AppsQuery", pages)


def apps(namespace: NamespaceOption = "default", url: UrlOption = BROKER_URL,
         as_json: JsonOption = False) -> None:  # fmt: skip
    """Your apps: state, replicas running against desired, and your quota's use."""
    reply = _apps(url, namespace, None)
    if as_json:
        print_json(reply.model_dump(mode="json"))
        return
    shown = table("app", "state", "running", "starting", "per PC", "reason")
    for view in reply.apps:
        per_node = ", ".join(f"{node} {n}" for node, n in sorted(view.replicas_per_node.items()))
        shown.add_row(view.app, view.state.value, f"{view.running}/{view.desired}",
                      str(view.starting), per_node, view.reason)  # fmt: skip
    console.print(shown)
    quota = reply.quota
    limit = f"{quota.cpu_millicores}m / {quota.memory_mib} MiB" if quota else "none"
    reserved, running = reply.reserved, reply.running
    console.print(
        f"quota {limit}; reserved {reserved.cpu_millicores}m / {reserved.memory_mib} MiB; "
        f"running {running.cpu_millicores}m / {running.memory_mib} MiB"
    )
    if reply.data_folders:  # a site without a data root: `bus data` says how to get one
        for line in _data_lines(reply):
            console.print(line)


def _data_lines(reply: AppsReply) -> list[str]:
    """Where the namespace's data folder is, in words."""
    if not reply.data_folders:
        return ["no data folder: this site's PCs have no data root (`bus agent run --data-root`)"]
    return [
        f"data folder {folder.path} (on {folder.pcs} PC{'s' if folder.pcs != 1 else ''}; "
        "replicas find it at $IDLECLOUD_DATA: this path, or /data in Docker)"
        for folder in reply.data_folders
    ]


def data(namespace: NamespaceOption = "default", url: UrlOption = BROKER_URL,
         as_json: JsonOption = False) -> None:  # fmt: skip
    """Where your data folder is: stage inputs there, and your workers write outputs there."""
    reply = _apps(url, namespace, None)
    if as_json:
        folders = [folder.model_dump(mode="json") for folder in reply.data_folders]
        print_json({"namespace": namespace, "data_folders": folders})
        return
    for line in _data_lines(reply):
        console.print(line)


def app_detail(
    app: Annotated[str, typer.Argument(help="The app's id.")],
    namespace: NamespaceOption = "default",
    url: UrlOption = BROKER_URL,
    as_json: JsonOption = False,
) -> None:
    """One app: its replicas, on which PC, in what state."""
    reply = _apps(url, namespace, app)
    if not reply.apps:
        fail(f"{namespace} has no app {app!r}; `bus apps` lists them", Exit.REFUSED)
    view = reply.apps[0]
    if as_json:
        print_json(view.model_dump(mode="json"))
        return
    console.print(f"{view.app}: {view.state.value}, {view.running}/{view.desired} running, "
                  f"{view.starting} starting, image {view.image}"
                  + (f" ({view.reason})" if view.reason else ""))  # fmt: skip
    shown = table("replica", "PC", "state")
    for replica in view.replicas:
        shown.add_row(replica.replica_id, replica.node, replica.state.value)
    console.print(shown)


def scale(
    app: Annotated[str, typer.Argument(help="The app's id.")],
    replicas: Annotated[int, typer.Argument(min=0, help="How many should run.")],
    namespace: NamespaceOption = "default",
    url: UrlOption = BROKER_URL,
    as_json: JsonOption = False,
) -> None:
    """Change how many replicas of an app run."""
    request = ScaleRequest(
        request_id=_request_id(), namespace=namespace, app=app, replicas=replicas
    )
    _submit(url, Owner.namespace(namespace), request, as_json, f"{app}: scaled to {replicas}")


def delete(
    app: Annotated[str, typer.Argument(help="The app's id.")],
    namespace: NamespaceOption = "default",
    url: UrlOption = BROKER_URL,
    as_json: JsonOption = False,
) -> None:
    """Remove an app and stop its replicas."""
    request = DeleteRequest(request_id=_request_id(), namespace=namespace, app=app)
    _submit(url, Owner.namespace(namespace), request, as_json, f"{app}: deleted")


def nodes(url: UrlOption = BROKER_URL, as_json: JsonOption = False) -> None:
    """Every PC: free, busy with a person, shared with one, lost, cordoned; its presence
    mode (suspend or coexist), capacity, reserved, replicas."""
    reply = asking(url, Owner.platform(), "NodesQuery", every_node)
    if as_json:
        print_json(reply.model_dump(mode="json"))
        return
    shown = table("PC", "state", "cause", "mode", "CPU reserved/allocatable", "memory MiB",
                  "replicas")  # fmt: skip
    for view in reply.nodes:
        shown.add_row(
            view.node,
            view.state,
            view.cause,
            view.mode,
            f"{view.reserved.cpu_millicores}/{view.allocatable.cpu_millicores}m",
            f"{view.reserved.memory_mib}/{view.allocatable.memory_mib}",
            str(view.replicas),
        )
    console.print(shown)


def _cordon_command(action: Literal["cordon", "uncordon", "drain"], done: str) -> Any:
    def command(
        node: Annotated[str, typer.Argument(help="The PC's name.")],
        reason: Annotated[str, typer.Option(help="Why, for the record.")] = "",
        url: UrlOption = BROKER_URL,
        as_json: JsonOption = False,
    ) -> None:
        request = CordonRequest(request_id=_request_id(), node=node, action=action, reason=reason)
        _submit(url, Owner.platform(), request, as_json, f"{node}: {done}")

    return command


quota_app = typer.Typer(help="Namespaces' quotas (admin).", no_args_is_help=True)


@quota_app.command("set")
def quota_set(
    namespace: Annotated[str, typer.Argument(help="The namespace.")],
    cpu_millicores: Annotated[
        int | None, typer.Option(min=0, help="CPU it may reserve in all.", show_default=False)
    ] = None,
    memory_mib: Annotated[
        int | None, typer.Option(min=0, help="Memory it may reserve in all.", show_default=False)
    ] = None,
    url: UrlOption = BROKER_URL,
    as_json: JsonOption = False,
) -> None:
    """Set how much a namespace's apps may reserve in all. Give either or both: the other
    keeps the namespace's current limit, or (with no quota yet) is not limited."""
    if cpu_millicores is None and memory_mib is None:
        fail("give --cpu-millicores, --memory-mib or both")
    if cpu_millicores is None or memory_mib is None:
        current = _apps(url, namespace, None).quota or UNLIMITED
        cpu_millicores = current.cpu_millicores if cpu_millicores is None else cpu_millicores
        memory_mib = current.memory_mib if memory_mib is None else memory_mib
    request = QuotaSet(request_id=_request_id(), namespace=namespace,
                       cpu_millicores=cpu_millicores, memory_mib=memory_mib)  # fmt: skip
    _submit(url, Owner.platform(), request, as_json, f"{namespace}: quota set")


@quota_app.command("show")
def quota_show(namespace: NamespaceOption = "default", url: UrlOption = BROKER_URL,
               as_json: JsonOption = False) -> None:  # fmt: skip
    """A namespace's quota and what it reserves and runs."""
    reply = _apps(url, namespace, None)
    if as_json:
        print_json(
            reply.model_dump(mode="json", include={"namespace", "quota", "reserved", "running"})
        )
        return
    if reply.quota is None:
        console.print(f"{namespace} has no quota")
        return
    for label, used in (("reserved", reply.reserved), ("running", reply.running)):
        console.print(f"{label}: {used.cpu_millicores}/{reply.quota.cpu_millicores}m CPU, "
                      f"{used.memory_mib}/{reply.quota.memory_mib} MiB")  # fmt: skip


def up(
    url: UrlOption = BROKER_URL,
    auth_key_file: Annotated[
        Path | None,
        typer.Option(
            envvar="IDLECLOUD_AUTH_KEY_FILE",
            help="The signing key: also run the auth service (`bus token init`).",
        ),
    ] = None,
    auth_port: Annotated[int, typer.Option(envvar="IDLECLOUD_AUTH_PORT")] = AUTH_PORT,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="IDLECLOUD_TLS_CERT",
            help="Serve the auth service and the gateway over HTTPS with this certificate "
            "(`bus tls init`; ca.pem beside it).",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(envvar="IDLECLOUD_TLS_KEY", help="The certificate's key.")
    ] = None,
    gateway_port: Annotated[
        int,
        typer.Option(
            envvar="IDLECLOUD_GATEWAY_PORT",
            help="With --auth-key-file, serve the REST API here (0: no gateway).",
        ),
    ] = GATEWAY_PORT,
    influx_db: Annotated[
        str | None,
        typer.Option(
            envvar="IDLECLOUD_INFLUX_DB", help="Also write metrics to this InfluxDB 1.x database."
        ),
    ] = None,
    influx_url: Annotated[str, typer.Option(envvar="IDLECLOUD_INFLUX_URL")] = INFLUX_URL,
    influx_api: Annotated[
        str,
        typer.Option(
            envvar="IDLECLOUD_INFLUX_API",
            help="v1 (/write: every InfluxDB 1.x) or v2 (influxdb-client: 1.8 and later).",
        ),
    ] = INFLUX_API,
    influx_token: Annotated[
        str, typer.Option(envvar="IDLECLOUD_INFLUX_TOKEN", help="v2's token (1.8: user:password).")
    ] = INFLUX_TOKEN,
    influx_org: Annotated[
        str, typer.Option(envvar="IDLECLOUD_INFLUX_ORG", help="v2's organisation (1.8: -).")
    ] = INFLUX_ORG,
    kube_namespace: Annotated[
        list[str] | None,
        typer.Option(
            help="Also mirror presence to Kubernetes, evicting this namespace's "
            "pods from a busy PC's node; repeat. Uses $KUBECONFIG or in-cluster."
        ),
    ] = None,
    kube_node_label: Annotated[
        str | None,
        typer.Option(help="Map a PC to the Kubernetes node whose label of this name names it."),
    ] = None,
    job_retention_s: Annotated[
        float,
        typer.Option(
            min=60,
            envvar="IDLECLOUD_JOB_RETENTION_S",
            help="Seconds an ended job's results are kept.",
        ),
    ] = 7 * 86_400,
    job_max_stored_mib: Annotated[
        int,
        typer.Option(
            min=1,
            envvar="IDLECLOUD_JOB_MAX_STORED_MIB",
            help="MiB of job results a namespace may keep.",
        ),
    ] = 1024,
    job_history_s: Annotated[
        float,
        typer.Option(
            min=60,
            envvar="IDLECLOUD_JOB_HISTORY_S",
            help="Seconds an ended job's record stays in the history.",
        ),
    ] = 180 * 86_400,
) -> None:
    """Run every control-plane service in one process (small sites, demos) until SIGTERM."""
    from services.auth.service import AuthService, AuthSettings
    from services.jobs.service import JobSettings, JobsService
    from services.placement.service import Placement, PlacementSettings
    from services.quota.service import QuotaManager

    try:
        tls = server_files(tls_cert, tls_key)
    except ValueError:
        fail("give both --tls-cert and --tls-key (from `bus tls init`), or neither")
    with_keys = auth_key_file is not None
    services: list[Service] = [
        QuotaManager(),
        Placement(PlacementSettings(replica_tokens=with_keys)),
        JobsService(
            JobSettings(job_retention_s, job_max_stored_mib * 1024**2, history_s=job_history_s)
        ),
    ]
    if auth_key_file is not None:
        if not auth_key_file.is_file():
            fail(f"no signing key at {auth_key_file}; make one with `bus token init`")
        vhost = addresses.first(url).path.lstrip("/") or "/"
        services.append(AuthService(AuthSettings(auth_key_file, vhost=vhost, http_port=auth_port,
                                                 tls=tls)))  # fmt: skip
    if auth_key_file is not None and gateway_port:
        from services.auth.tokens import SigningKey
        from services.gateway.service import Gateway, GatewaySettings

        public = auth_key_file.with_name(f"{auth_key_file.stem}.pub.pem")
        if not public.exists():
            public.write_bytes(SigningKey.load(auth_key_file).public_pem)
        auth_url = f"{'https' if tls else 'http'}://127.0.0.1:{auth_port}"
        services.append(Gateway(GatewaySettings(public, http_port=gateway_port, tls=tls,
                                                auth_url=auth_url)))  # fmt: skip
    if influx_db is not None:
        from services.metrics.influx import influx_sink
        from services.metrics.usage_server import UsageServer, usage_query
        from services.metrics.writer import MetricsWriter

        try:
            sink = influx_sink(
                influx_api, influx_url, influx_db, token=influx_token, org=influx_org
            )
        except ValueError as error:
            fail(str(error))
        query = usage_query(influx_api, influx_url, influx_db, influx_token)
        services += [MetricsWriter(sink), UsageServer(query)]
    if kube_namespace:
        from services.kubebridge.service import BridgeSettings, KubeBridge

        services.append(KubeBridge(BridgeSettings(frozenset(kube_namespace), kube_node_label)))

    required = CORE_SERVICES | ({"auth"} if auth_key_file is not None else set())

    async def say_when_ready() -> None:
        report = await wait_until_ready(url, 120, frozenset(required))
        if report["ready"]:
            serving = [name for name, state in report["services"].items() if state == "serving"]
            console.print(f"bus up: ready ({', '.join(serving)} serving)", style="green")
        else:
            console.print(f"bus up: not ready after 120 s: {', '.join(report['missing'])}")

    run(url, services, name="bus up", grace_s=5.0, on_started=say_when_ready)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `bus` app."""
    app.command("up")(up)
    app.command("deploy")(deploy)
    app.command("apps")(apps)
    app.command("data")(data)
    app.command("app")(app_detail)
    app.command("scale")(scale)
    app.command("delete")(delete)
    app.command("nodes")(nodes)
    app.command("cordon", help="Place nothing new on a PC (admin).")(
        _cordon_command("cordon", "cordoned"))  # fmt: skip
    app.command("uncordon", help="Let a PC take work again (admin).")(
        _cordon_command("uncordon", "uncordoned"))  # fmt: skip
    app.command("drain", help="Move every replica off a PC (admin).")(
        _cordon_command("drain", "draining"))  # fmt: skip
    app.add_typer(quota_app, name="quota")
