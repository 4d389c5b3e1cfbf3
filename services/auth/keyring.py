"""The broker keys RabbitMQ trusts, changed while it runs.

RabbitMQ 3.10's OAuth 2 backend keeps its signing keys in its application environment and
looks a token's ``kid`` up there on every login (and ``update-secret``). The auth service
adds a key's broker key when the key is first traded for a token and removes it when the
key is revoked, and closes every token holder's connection at the same time (one may hold
the key's token under another name, by ``update-secret``); from that instant no token
signed with it opens a connection or passes an ``update-secret``. Changes run
as one ``rabbitmqctl eval`` on every running cluster node, under a cluster-wide lock, so
concurrent changes never lose each other's keys. The environment does not survive a
broker restart: the auth leader trusts every live key again when it takes over and after
its connection comes back.

:func:`change_expression` (the Erlang text) is pure; :class:`Keyring` runs it.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from typing import get_args

from bus.trust import TokenRole
from services.auth.tokens import BrokerKey

__all__ = ["KEYS_PER_CHANGE", "Keyring", "KeyringError", "change_expression", "erlang_binary"]

#: Keys per ``rabbitmqctl eval``: one argument stays far below Linux's 128 KiB limit.
KEYS_PER_CHANGE = 200


class KeyringError(RuntimeError):
    """The broker's keys could not be changed; the message says why."""


def erlang_binary(text: str) -> str:
    """An Erlang binary of ``text``, spelled in base64: rabbitmqctl's eval drops ``\\"``."""
    return f'base64:decode(<<"{base64.b64encode(text.encode()).decode()}">>)'


#: A token holder's user name starts with its role (:class:`bus.trust.Principal`).
_TOKEN_PREFIXES = ", ".join(erlang_binary(f"{role}:") for role in get_args(TokenRole))


def change_expression(
    trust: Sequence[BrokerKey] = (),
    forget: Sequence[str] = (),
    close_on: str | None = None,
    spare: str = "",
) -> str:
    """The Erlang expression that adds ``trust`` and removes the key ids ``forget`` on
    every running node of the cluster, leaving every other key as it is, then (with
    ``close_on``, a vhost) closes every token holder's connection to that vhost but those
    of the user named ``spare``; its value is how many it closed."""
    added = ", ".join(
        f"{erlang_binary(key.kid)} => {{json, {erlang_binary(key.jwk())}}}" for key in trust
    )
    removed = ", ".join(erlang_binary(kid) for kid in forget)
    closing = "" if close_on is None else (
        f"VHost = {erlang_binary(close_on)}, Spare = {erlang_binary(spare)}, "
        f"Prefixes = [{_TOKEN_PREFIXES}], "
        "Token = fun(U) -> lists:any(fun(R) -> "
        "binary:longest_common_prefix([U, R]) =:= byte_size(R) end, Prefixes) end, "
        "Close = fun() -> length([rabbit_networking:close_connection(P, "
        '"an API key was revoked: connect again") || '
        "I <- rabbit_networking:connection_info_all([pid, user, vhost]), "
        "{pid, P} <- [lists:keyfind(pid, 1, I)], {user, U} <- [lists:keyfind(user, 1, I)], "
        "{vhost, V} <- [lists:keyfind(vhost, 1, I)], V =:= VHost, U =/= Spare, Token(U)]) "
        "end, "
        "{Counts, []} = rpc:multicall(rabbit_nodes:all_running(), erlang, apply, "
        "[Close, []]), lists:sum(Counts)."
    )  # fmt: skip
    return (
        "App = rabbitmq_auth_backend_oauth2, "
        f"Trust = #{{{added}}}, Forget = [{removed}], "
        "Change = fun() -> "
        "C = application:get_env(App, key_config, []), "
        "K = proplists:get_value(signing_keys, C, #{}), "
        "New = maps:merge(maps:without(Forget, K), Trust), "
        "application:set_env(App, key_config, "
        "lists:keystore(signing_keys, 1, C, {signing_keys, New})) end, "
        "{_, []} = global:trans({idlecloud_keyring, self()}, fun() -> "
        "rpc:multicall(rabbit_nodes:all_running(), erlang, apply, [Change, []]) end), "
        + (closing or "0.")
    )


class Keyring:
    """Changes the broker's trusted keys with ``rabbitmqctl`` (on the broker's host, or
    wherever its Erlang cookie lets ``command`` reach it)."""

    def __init__(self, command: Sequence[str] = ("rabbitmqctl",), timeout_s: float = 60.0):
        self.command = tuple(command)
        self.timeout_s = timeout_s

    async def change(self, trust: Sequence[BrokerKey] = (), forget: Sequence[str] = ()) -> None:
        """Trust these keys and forget those key ids, in batches.

        Raises:
            KeyringError: rabbitmqctl is missing, failed or timed out.
        """
        for start in range(0, max(len(trust), len(forget)), KEYS_PER_CHANGE):
            batch = slice(start, start + KEYS_PER_CHANGE)
            await self._eval(change_expression(trust[batch], forget[batch]))

    async def revoke(self, kid: str, vhost: str, spare: str = "") -> int:
        """Forget one key id, then close every token holder's connection to ``vhost`` on
        every node (whichever token each holds now) but those of the user ``spare``: how
        many were closed.

        Raises:
            KeyringError: rabbitmqctl is missing, failed or timed out.
        """
        return await self._eval(change_expression(forget=[kid], close_on=vhost, spare=spare))

    async def _eval(self, expression: str) -> int:
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command,
                "eval",
                expression,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
        except OSError as error:
            raise KeyringError(
                f"cannot run {self.command[0]}: {error}; the auth service changes the "
                "broker's keys with rabbitmqctl (set IDLECLOUD_BROKER_CTL)"
            ) from None
        try:
            async with asyncio.timeout(self.timeout_s):
                output, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise KeyringError(f"rabbitmqctl eval took over {self.timeout_s:g} s") from None
        text = output.decode(errors="replace").strip()
        last = text.splitlines()[-1] if text else ""
        if process.returncode != 0 or not last.isdigit():
            raise KeyringError(f"rabbitmqctl eval failed ({process.returncode}): {text[-500:]}")
        return int(last)
