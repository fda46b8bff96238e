"""`registry-gateway` (and `python -m service`): serve, hash-key."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import secrets
import sys
from collections.abc import Sequence

import aioboto3

from service.app import embedded
from service.app.server import BindError, Gateway
from service.app.workers import run_workers
from service.auth.api_keys import hash_key
from service.config import ENV_CONFIG_PATH, ConfigError, GatewayConfig, load, parse_listen
from service.observability.logs import configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="registry-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    source = serve.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="PATH", help=f"YAML config (or env {ENV_CONFIG_PATH})")
    source.add_argument(
        "--embedded", action="store_true", help="moto as AWS and a demo tenant (for trying it out)"
    )
    serve.add_argument("--listen", metavar="HOST:PORT", help="overrides `listen` of the config")
    serve.add_argument(
        "--http-listen",
        metavar="HOST:PORT",
        help="serve HTTP/JSON (Connect) here; overrides `http.listen` of the config "
        "(--embedded: 127.0.0.1:8080, or a free port with `--listen HOST:0`)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="serve from N processes on one port (SO_REUSEPORT), the HTTP listener's too; "
        "needs fixed ports",
    )
    hashing = commands.add_parser(
        "hash-key", help="print the config form (sha256:<hex>) of an API key"
    )
    hashing.add_argument(
        "key", nargs="?", help="the key; omitted: generate a new one and print both"
    )
    return parser


async def _serve(
    config: GatewayConfig,
    listen: str | None,
    embedded_key: str | None,
    config_path: str | None = None,
    *,
    http_listen: str | None = None,
    reuse_port: bool = False,
    announce: bool = True,
) -> None:
    if http_listen is not None:
        # --http-listen turns the HTTP listener on, or moves it.
        config = config.model_copy(
            update={"http": config.http.model_copy(update={"listen": http_listen})}
        )
    gateway = Gateway(
        config,
        session_factory=embedded.session_factory if embedded_key else aioboto3.Session,
        config_path=config_path,
        reuse_port=reuse_port,
    )
    port = await gateway.start(listen, http_listen)
    # What start-up loaded (botocore's models, the clients, the config) lives as long as the
    # process: moved out of the collector's reach, a full collection scans only what calls
    # allocate, instead of pausing every call for tens of milliseconds under load.
    # https://docs.python.org/3/library/gc.html#gc.freeze
    gc.freeze()
    if embedded_key is not None and announce:
        host = (listen or config.listen).rsplit(":", 1)[0]
        http = None
        if gateway.http is not None:
            http = f"{parse_listen(config.http.listen or '')[0]}:{gateway.http_port}"
        print(
            embedded.banner(
                f"{host}:{port}", embedded_key, bool(os.environ.get(embedded.DEMO_KEY_ENV)), http
            ),
            flush=True,
        )
    await gateway.run_until_signal()


def _run_serve(opts: argparse.Namespace) -> int:
    config_path = opts.config or os.environ.get(ENV_CONFIG_PATH)
    if opts.embedded and config_path and not opts.config:
        config_path = None  # --embedded wins over an inherited env var, and says nothing else
    if not config_path and not opts.embedded:
        print(
            f"refusing to start: no config. Pass --config PATH (or set {ENV_CONFIG_PATH}) to "
            "run against AWS, or --embedded to try it against a local fake AWS.",
            file=sys.stderr,
        )
        return 2
    for flag, value in (("--listen", opts.listen), ("--http-listen", opts.http_listen)):
        if value:
            try:
                parse_listen(value)
            except ValueError as exc:
                print(f"error: {flag}: {exc}", file=sys.stderr)
                return 2
    if opts.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    configure_logging()
    moto = None
    try:
        key = None
        if opts.embedded:
            # In the parent: with several workers, they all share this one fake AWS.
            moto = embedded.start_moto()
            key = embedded.demo_key()
            config = embedded.demo_config(moto.endpoint_url, key)
            path = None
        else:
            path = str(config_path)
            config = load(path)
        configure_logging(config.logs)
        if (
            opts.embedded
            and not opts.http_listen
            and opts.listen
            and parse_listen(opts.listen)[1] == 0
        ):
            # `--listen HOST:0` (tests, several gateways at once): the HTTP listener too
            # takes a free port rather than the demo's fixed one.
            opts.http_listen = f"{parse_listen(opts.listen)[0]}:0"
        if opts.workers == 1:
            asyncio.run(_serve(config, opts.listen, key, path, http_listen=opts.http_listen))
            return 0
        listen = opts.listen or config.listen
        if parse_listen(listen)[1] == 0 or len(config.effective_listeners()) > 1:
            print("error: --workers needs one listener on a fixed port", file=sys.stderr)
            return 2
        # Every worker serves the HTTP listener too, on the same port (SO_REUSEPORT).
        http_listen = opts.http_listen or config.http.listen
        if http_listen is not None and parse_listen(http_listen)[1] == 0:
            print("error: --workers needs the HTTP listener on a fixed port", file=sys.stderr)
            return 2

        def work(index: int) -> int:
            try:
                coroutine = _serve(
                    config,
                    listen,
                    key,
                    path,
                    http_listen=opts.http_listen,
                    reuse_port=True,
                    announce=index == 0,
                )
                asyncio.run(coroutine)
            except (ConfigError, BindError) as exc:
                print(str(exc), file=sys.stderr)
                return 2
            return 0

        return run_workers(opts.workers, work)
    except (ConfigError, BindError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    finally:
        if moto is not None:
            moto.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    opts = _parser().parse_args(argv)
    if opts.command == "hash-key":
        key = opts.key or secrets.token_urlsafe(32)
        if not opts.key:
            print(f"key:    {key}")
        print(hash_key(key) if opts.key else f"config: {hash_key(key)}")
        return 0
    return _run_serve(opts)
