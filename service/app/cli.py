"""`registry-gateway` (and `python -m service`): serve, check-config, config-schema, hash-key."""

from __future__ import annotations

import argparse
import gc
import getpass
import json
import os
import secrets
import sys
from collections.abc import Sequence
from typing import Any

from service.auth.api_keys import hash_key
from service.config import (
    ENV_CONFIG_PATH,
    ENV_OVERRIDE_PREFIX,
    ConfigError,
    GatewayConfig,
    load,
    parse_listen,
)
from service.ecr import limits as ecr_limits
from service.observability import build
from service.observability.logs import configure_logging
from service.observability.tracing import settings as tracing_settings

# The longest API key hash-key reads: a key is a bearer token, not a document.
MAX_KEY_CHARS = 4096
KEY_ARGUMENT_REFUSED = (
    "error: hash-key takes no key argument: a key on the command line stays in your shell "
    "history and is visible to every user of this machine in `ps`. Pipe it on stdin "
    '(printf %s "$KEY" | registry-gateway hash-key), run it at a terminal to be prompted '
    "without echo, or make a new one with --generate."
)


class _VersionAction(argparse.Action):
    """`--version`: the version and commit, looked up only when asked (git is not free)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and commit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(build.describe())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="registry-gateway", description=__doc__)
    parser.add_argument("--version", action=_VersionAction)
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
    check = commands.add_parser(
        "check-config",
        help="check a config file offline and list every problem (exit 1 if any)",
        description="Validate a config as `serve` would (schema, cross-field checks, "
        f"{ENV_OVERRIDE_PREFIX}* overrides from the environment), without calling AWS, "
        "and list every problem with its key. Exit 0 when valid, 1 when not, 2 on usage.",
    )
    check.add_argument(
        "path", nargs="?", metavar="PATH", help=f"YAML config (default: env {ENV_CONFIG_PATH})"
    )
    check.add_argument(
        "--json", action="store_true", help="print the result as one JSON object on stdout"
    )
    commands.add_parser(
        "config-schema",
        help="print the JSON Schema of the config file (for editors and CI)",
    )
    hashing = commands.add_parser(
        "hash-key",
        help="print the config form (sha256:<hex>) of an API key read from stdin",
        description="Reads one key from stdin (at a terminal: prompts without echo) and "
        "prints its config form. Never from an argument: shell history and `ps` would keep it.",
    )
    hashing.add_argument(
        "--generate", action="store_true", help="make a new key and print it and its config form"
    )
    # Accepted only to be refused with the reason (argparse's own error would not say why).
    hashing.add_argument("key", nargs="?", help=argparse.SUPPRESS)
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
    import aioboto3

    from service.app import embedded
    from service.app.server import Gateway

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
    # The server, the AWS SDK and moto load only to serve (about a second of imports):
    # `--version`, `hash-key`, `check-config` and `config-schema` answer without them.
    from service.app import embedded, event_loop
    from service.app.server import BindError
    from service.app.workers import run_workers

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
            event_loop.run(
                _serve(config, opts.listen, key, path, http_listen=opts.http_listen),
                config.server.event_loop,
            )
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
                event_loop.run(coroutine, config.server.event_loop)
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


def _check_config(opts: argparse.Namespace) -> int:
    """Every problem of a config at once, each with its key; never a secret (no input
    value is printed, only the messages of service/config/, which quote no secret)."""
    path = opts.path or os.environ.get(ENV_CONFIG_PATH)
    if not path:
        print(f"error: give the config's PATH (or set {ENV_CONFIG_PATH})", file=sys.stderr)
        return 2
    overrides = sorted(name for name in os.environ if name.startswith(ENV_OVERRIDE_PREFIX))
    problems: tuple[tuple[str, str], ...] = ()
    config: GatewayConfig | None = None
    try:
        config = load(path)
        # The OTEL_* variables too: a value `serve` would refuse (service/observability/tracing.py).
        tracing_settings(config.tracing, os.environ)
    except ConfigError as exc:
        config, problems = None, exc.problems
    if opts.json:
        result = {
            "path": path,
            "ok": config is not None,
            "problems": [{"key": key, "message": message} for key, message in problems],
            # Names only: their values may be secrets.
            "env_overrides": overrides,
        }
        print(json.dumps(result, indent=2))
    elif config is None:
        for key, message in problems:
            line = f"config error: {key}: {message}" if key else f"config error: {message}"
            print(line, file=sys.stderr)
        count = len(problems)
        print(f"{path}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
    else:
        registries = sum(len(tenant.registries) for tenant in config.tenants)
        with_env = f", with env overrides {', '.join(overrides)}" if overrides else ""
        print(
            f"{path}: ok ({len(config.tenants)} tenants, {registries} registry entries"
            f"{with_env}; offline: AWS, Redis, env secrets and the files it names are not "
            "checked)"
        )
        for line in _worst_cases(config):
            print(line)
    return 0 if config is not None else 1


def _worst_cases(config: GatewayConfig) -> list[str]:
    """Per registry holding slices, what its replication configuration and policy would
    hold if every tenant used its whole share (service/ecr/limits.py): the headroom an
    operator sees before deploying."""
    lines = []
    plan = ecr_limits.share_plan(config.tenants)
    for registry_id, case in sorted(plan.worst_cases.items()):
        lines.append(
            f"registry {registry_id}: if every slice used its whole share: "
            f"{case.rules} of {ecr_limits.MAX_RULES} rules ({case.filters} filters of "
            f"{case.rule_slices} rule slice(s) over at most {case.destination_sets} "
            f"destination set(s)), {case.destinations} of "
            f"{ecr_limits.MAX_UNIQUE_DESTINATIONS} unique destinations, "
            f"{case.policy_chars} of {ecr_limits.POLICY_STATEMENT_CHARS} policy statement "
            "characters"
        )
    return lines


def _config_schema() -> int:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **GatewayConfig.model_json_schema(),
    }
    schema["title"] = f"registry-gateway {build.version()} config"
    print(json.dumps(schema, indent=2))
    return 0


def _read_key() -> str | None:
    """The key from stdin: prompted without echo at a terminal, else read from the pipe."""
    try:
        if sys.stdin.isatty():
            text = getpass.getpass("API key (not echoed): ")
        else:
            text = sys.stdin.read(MAX_KEY_CHARS + 1)
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        return None
    if len(text) > MAX_KEY_CHARS:
        print(f"error: a key is at most {MAX_KEY_CHARS} characters", file=sys.stderr)
        return None
    # The gateway strips the bearer token it is sent, so a key is compared without the
    # spaces and newline around it; `echo "$KEY" |` and `printf %s "$KEY" |` hash the same.
    key = text.strip()
    if not key:
        print("error: no key on stdin", file=sys.stderr)
        return None
    if not key.isprintable() or any(ch.isspace() for ch in key):
        # Never echoed, not even in part: it is a secret.
        print(
            "error: a key is one line of printable characters without spaces "
            "(more than one line on stdin?)",
            file=sys.stderr,
        )
        return None
    return key


def _hash_key(opts: argparse.Namespace) -> int:
    if opts.key is not None:
        print(KEY_ARGUMENT_REFUSED, file=sys.stderr)
        return 2
    if opts.generate:
        key = secrets.token_urlsafe(32)
        print(f"key:    {key}")
        print(f"config: {hash_key(key)}")
        return 0
    given = _read_key()
    if given is None:
        return 1
    print(hash_key(given))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    opts = _parser().parse_args(argv)
    if opts.command == "hash-key":
        return _hash_key(opts)
    if opts.command == "check-config":
        return _check_config(opts)
    if opts.command == "config-schema":
        return _config_schema()
    return _run_serve(opts)
