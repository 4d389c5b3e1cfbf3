"""`bus token init|issue|revoke|list`, `bus whoami`, `bus broker config` and `bus tls init`.

Admins issue and revoke API keys through the auth service; the very first admin key is
minted offline from the signing key file (`bus token issue --key-file`) that `bus token
init` makes. `bus tls init` makes the site's CA and the control host's certificate;
`bus broker config` makes the broker serve TLS and enables its OAuth 2 backend; the auth
service tells the running broker which keys' tokens to trust.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

import typer

from bus.credentials import api_key_from_env
from bus.defaults import AUTH_URL, BROKER_URL, HOST
from bus.tls import https_context
from idlecloud.cli._common import (
    Exit,
    JsonOption,
    UrlOption,
    console,
    fail,
    print_json,
    run_async,
    table,
)
from idlecloud.cli.session import ask
from idlecloud.dev.services import RESOURCE_SERVER_ID
from schemas import (
    KeyReply,
    KeysQuery,
    KeysReply,
    Owner,
    RequestResult,
    Resources,
    TokenIssue,
    TokenRevoke,
)

__all__ = ["register"]

token_app = typer.Typer(help="API keys (admin).", no_args_is_help=True)
broker_app = typer.Typer(help="The broker's configuration.", no_args_is_help=True)
tls_app = typer.Typer(help="The site's certificate authority.", no_args_is_help=True)

AuthUrlOption = Annotated[
    str, typer.Option("--auth-url", envvar="IDLECLOUD_AUTH_URL", help="The auth service.")
]


@token_app.command("init")
def token_init(
    folder: Annotated[Path, typer.Argument(help="Where to write the signing key.")] = Path(
        "/etc/idlecloud/keys"
    ),
) -> None:
    """Make the auth service's signing key (private, 0600) and its public half."""
    from services.auth.tokens import SigningKey

    private, public = SigningKey.generate().save(folder)
    console.print(f"signing key {private}\npublic key  {public}\n"
                  "next: bus broker config (then restart RabbitMQ)")  # fmt: skip


@token_app.command("issue")
def token_issue(
    role: Annotated[str, typer.Option(help="user, node or admin.")],
    subject: Annotated[str, typer.Option(help="The namespace, PC or admin name.")],
    name: Annotated[str, typer.Option(help="Who holds it, for the record.")] = "",
    ttl_days: Annotated[int, typer.Option(min=1, max=5 * 365, help="Lifetime.")] = 365,
    cpu_millicores: Annotated[int | None, typer.Option(help="A user's quota: CPU.")] = None,
    memory_mib: Annotated[int | None, typer.Option(help="A user's quota: memory.")] = None,
    key_file: Annotated[
        Path | None, typer.Option(help="Mint offline with this signing key (the first admin).")
    ] = None,
    url: UrlOption = BROKER_URL,
    as_json: JsonOption = False,
) -> None:
    """Issue an API key; it is shown once. A user's key with limits sets her quota."""
    if role not in ("user", "node", "admin"):
        fail(f"unknown role {role!r}; pass --role user, node or admin")
    if (cpu_millicores is None) != (memory_mib is None):
        fail("give both --cpu-millicores and --memory-mib, or neither")
    limits = None
    if cpu_millicores is not None and memory_mib is not None:
        limits = Resources(cpu_millicores=cpu_millicores, memory_mib=memory_mib)
    if key_file is not None:
        from services.auth.service import key_view
        from services.auth.tokens import SigningKey, mint_api_key

        try:
            signing = SigningKey.load(key_file)
        except OSError as error:
            fail(f"cannot read the signing key {key_file}: {error.strerror}")
        pair = (limits.cpu_millicores, limits.memory_mib) if limits else None
        issued, api_key = mint_api_key(signing, role, subject, name=name,  # type: ignore[arg-type]
                                       ttl_s=ttl_days * 86_400, limits=pair)  # fmt: skip
        reply = KeyReply(request_id=uuid.uuid4().hex[:16], accepted=True, key=key_view(issued),
                         api_key=api_key)  # fmt: skip
    else:
        request = TokenIssue(request_id=uuid.uuid4().hex[:16], role=role, subject=subject,  # type: ignore[arg-type]
                             name=name, ttl_s=ttl_days * 86_400, limits=limits)  # fmt: skip
        reply = ask(url, Owner.platform(), request, KeyReply)
    if not reply.accepted or reply.key is None:
        fail(f"refused: {reply.reason}", Exit.REFUSED)
    if as_json:
        print_json({**reply.key.model_dump(mode="json"), "api_key": reply.api_key})
        return
    console.print(
        f"key {reply.key.key_id} for {role} {subject}, until {reply.key.expires_at:%Y-%m-%d}"
    )
    console.print("keep it secret; it is not shown again:")
    console.print(reply.api_key, soft_wrap=True, highlight=False)


@token_app.command("revoke")
def token_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `bus token list`).")],
    reason: Annotated[str, typer.Option(help="Why, for the record.")] = "",
    url: UrlOption = BROKER_URL,
    as_json: JsonOption = False,
) -> None:
    """Revoke an API key: no new broker tokens, and its open connections are closed."""
    request = TokenRevoke(request_id=uuid.uuid4().hex[:16], key_id=key_id, reason=reason)
    result = ask(url, Owner.platform(), request, RequestResult)
    if not result.accepted:
        fail(f"refused: {result.reason}", Exit.REFUSED)
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    console.print(f"{key_id}: {result.reason}")


@token_app.command("list")
def token_list(url: UrlOption = BROKER_URL, as_json: JsonOption = False) -> None:
    """Every API key issued (never the keys themselves)."""
    reply = ask(url, Owner.platform(), KeysQuery(), KeysReply)
    if as_json:
        print_json(reply.model_dump(mode="json")["keys"])
        return
    shown = table("key", "role", "subject", "name", "expires", "revoked")
    for key in sorted(reply.keys, key=lambda k: (k.role, k.subject)):
        shown.add_row(key.key_id, key.role, key.subject, key.name,
                      f"{key.expires_at:%Y-%m-%d}", "yes" if key.revoked else "")  # fmt: skip
    console.print(shown)


def whoami(auth_url: AuthUrlOption = AUTH_URL, as_json: JsonOption = False) -> None:
    """What your API key (IDLECLOUD_API_KEY or IDLECLOUD_API_KEY_FILE) says you are."""
    api_key = api_key_from_env()
    if api_key is None:
        fail("no API key: set IDLECLOUD_API_KEY (or IDLECLOUD_API_KEY_FILE); ask an admin")
    import aiohttp  # here: every `bus` process (a replica's worker too) loads this module

    async def call() -> tuple[int, dict[str, object]]:
        headers = {"Authorization": f"Bearer {api_key}"}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(
                f"{auth_url.rstrip('/')}/v1/whoami",
                headers=headers,
                ssl=https_context(),
            ) as answer,  # fmt: skip
        ):
            return answer.status, await answer.json(content_type=None)

    try:
        status, body = run_async(call)
    except aiohttp.ClientError as error:
        fail(f"the auth service at {auth_url} cannot be reached ({error}); set IDLECLOUD_AUTH_URL",
             Exit.UNREACHABLE)  # fmt: skip
    if status != 200:
        fail(f"the auth service refused the key: {body.get('error')}", Exit.REFUSED)
    if as_json:
        print_json(body)
    else:
        console.print(f"{body['role']} {body['subject']} (key {body['key_id']}, "
                      f"until {str(body['expires_at'])[:10]})")  # fmt: skip


@broker_app.command("config")
def broker_config(
    out: Annotated[Path, typer.Option(help="Where to write the files.")] = Path("/etc/rabbitmq"),
    tls_dir: Annotated[
        Path,
        typer.Option(help="The folder of `bus tls init`: ca.pem, server.pem, server.key."),
    ] = Path("/etc/idlecloud/tls"),
) -> None:
    """Write the rabbitmq.conf fragment and plugins that make the broker serve TLS and
    check our tokens (plain AMQP stays on loopback, for the control plane on this host)."""
    for name in ("ca.pem", "server.pem", "server.key"):
        if not (tls_dir / name).is_file():
            fail(f"no {tls_dir / name}; make the site's CA and certificate with "
                 f"`bus tls init {tls_dir} --host <this host's name>`")  # fmt: skip
    (out / "conf.d").mkdir(parents=True, exist_ok=True)
    fragment = out / "conf.d" / "20-idlecloud-auth.conf"
    fragment.write_text(
        "# Written by `bus broker config`: TLS for the network, plain AMQP on loopback only;\n"
        "# the platform's own services use internal users; users, PCs and replicas present\n"
        "# broker tokens signed by the auth service.\n"
        "listeners.tcp.1 = 127.0.0.1:5672\n"
        "listeners.ssl.default = 5671\n"
        f"ssl_options.cacertfile = {tls_dir.resolve() / 'ca.pem'}\n"
        f"ssl_options.certfile = {tls_dir.resolve() / 'server.pem'}\n"
        f"ssl_options.keyfile = {tls_dir.resolve() / 'server.key'}\n"
        "ssl_options.verify = verify_none\n"
        "ssl_options.fail_if_no_peer_cert = false\n"
        "auth_backends.1 = internal\n"
        "auth_backends.2 = rabbit_auth_backend_oauth2\n"
        f"auth_oauth2.resource_server_id = {RESOURCE_SERVER_ID}\n"
        "# No signing key here: the auth service adds each API key's broker key while the\n"
        "# broker runs (rabbitmqctl, on this host) and removes it when the key is revoked.\n"
    )
    plugins = out / "enabled_plugins"
    plugins.write_text("[rabbitmq_management,rabbitmq_auth_backend_oauth2].\n")
    console.print(f"wrote {fragment} and {plugins}; restart RabbitMQ to apply them")


@tls_app.command("init")
def tls_init(
    folder: Annotated[Path, typer.Argument(help="Where to write the files.")] = Path(
        "/etc/idlecloud/tls"
    ),
    host: Annotated[
        list[str] | None,
        typer.Option(
            help="A name or address clients reach the control host by; repeat "
            "(127.0.0.1 and localhost are always included)."
        ),
    ] = None,
) -> None:
    """Make the site's CA (ca.pem, ca.key) and the control host's certificate
    (server.pem, server.key) for the broker, the auth service and the gateway."""
    from bus.tls import SiteCA

    ca = SiteCA.kept_in(folder)
    # the control host calls itself too (the gateway its auth service)
    hosts = list(dict.fromkeys([*(host or []), HOST, "localhost"]))
    files = ca.issue_files(folder, "server", hosts)
    console.print(f"CA {files.ca_file} (give it to every client: IDLECLOUD_CA_FILE, or "
                  f"?cafile= in the amqps:// URL)\ncertificate {files.cert_file} for "
                  f"{', '.join(hosts)}\nnext: bus broker config --tls-dir {folder}")  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `bus` app."""
    app.add_typer(token_app, name="token")
    app.add_typer(broker_app, name="broker")
    app.add_typer(tls_app, name="tls")
    app.command("whoami")(whoami)
