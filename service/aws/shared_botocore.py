"""What every AWS client of the gateway process shares, made once per process.

A botocore session parses botocore's data (service models, endpoints, partitions) into a
loader of its own and registers botocore's few hundred built-in event handlers into an
emitter of its own, and every aiobotocore client loads the CA bundle into an SSL context
of its own for its aiohttp connector. With one session per assumed role, that was ~5 MB and
tens of milliseconds per (account, region) (docs/performance.md, "Many accounts"). Here:

- one data loader (botocore's `create_loader`), registered as every role session's
  `data_loader` component through the public `Session.register_component`: each JSON file
  is parsed once per process; the endpoint resolver and partition data a session builds
  from it are views of those parsed dicts;
- one event emitter holding botocore's built-in handlers, given to every role session
  through the public `event_hooks` / `include_builtin_handlers` arguments of its
  constructor; every client still gets its own copy of it (botocore's ClientArgsCreator),
  so what is registered on one client (service/aws/errors.py `watch_attempts`) stays there;
- one TLS context per CA bundle for every client's connections (`TlsContexts`, through the
  HTTP session class `AioConfig(http_session_cls=...)` takes).
"""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.credentials import AioCredentialResolver
from aiobotocore.hooks import AioHierarchicalEmitter
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import AioSession
from botocore.httpsession import MAX_POOL_CONNECTIONS, create_urllib3_context, get_cert_path
from botocore.loaders import Loader, create_loader


class TlsContexts:
    """One verifying SSL context per CA bundle, for the whole process, made as aiobotocore
    makes each client's own (botocore's `create_urllib3_context`, the bundle loaded into
    it): loading the bundle costs tens of ms and most of a megabyte per context."""

    def __init__(self) -> None:
        self._by_bundle: dict[str, ssl.SSLContext] = {}

    def for_bundle(self, bundle: str) -> ssl.SSLContext:
        """The context trusting exactly `bundle` (a CA file's path)."""
        context = self._by_bundle.get(bundle)
        if context is None:
            context = create_urllib3_context()
            context.load_verify_locations(bundle, None, None)
            self._by_bundle[bundle] = context
        return context

    @property
    def made(self) -> int:
        """How many contexts were made (one per CA bundle used)."""
        return len(self._by_bundle)


def shared_tls_session(contexts: TlsContexts) -> type[Any]:
    """aiobotocore's aiohttp session class, its connectors verifying with `contexts`.

    Why a subclass: `AioConfig(connector_args={"ssl_context": ...})` cannot do it.
    aiobotocore 2.25 still builds its own context and passes both to aiohttp, which refuses
    them together ("verify_ssl, ssl_context, fingerprint and ssl parameters are mutually
    exclusive"; aio-libs/aiobotocore#910 to fix it was closed unmerged). The one hook is
    `_create_connector`; it is taken over only where nothing per-client shapes the context
    (TLS verified against a CA bundle, no client certificate, no proxy) and left to
    aiobotocore otherwise. tests/aws/test_shared_clients.py fails if aiobotocore renames it.
    """

    class SharedTlsSession(AIOHTTPSession):  # type: ignore[misc]  # aiobotocore is untyped
        def __init__(self, **kwargs: Any) -> None:
            # aiobotocore's endpoint passes every argument by name (AioEndpointCreator).
            super().__init__(**kwargs)
            self._shared_tls_args = kwargs

        def _create_connector(self, proxy_url: str | None) -> Any:
            args = self._shared_tls_args
            verify = args.get("verify", True)
            connector_args = args.get("connector_args")
            bundle = get_cert_path(verify) if verify else None
            if proxy_url or args.get("client_cert") or connector_args is None or not bundle:
                return super()._create_connector(proxy_url)
            return aiohttp.TCPConnector(
                limit=args.get("max_pool_connections", MAX_POOL_CONNECTIONS),
                ssl=contexts.for_bundle(bundle),
                **connector_args,
            )

    return SharedTlsSession


class SharedBotocore:
    """The loader, event hooks and TLS contexts every AWS client of one process shares;
    `session` makes a role's botocore session on them, `config` a client config using the
    shared TLS contexts."""

    def __init__(self) -> None:
        self.loader: Loader = create_loader()
        self.tls = TlsContexts()
        self._http_session_cls = shared_tls_session(self.tls)
        self._events = AioHierarchicalEmitter()
        self._handlers_registered = False

    def session(self, credentials: AioCredentialResolver) -> AioSession:
        """A botocore session of its own credentials (a role's), on the shared parts."""
        session = AioSession(
            event_hooks=self._events,
            # botocore's built-in handlers, registered once into the shared emitter.
            include_builtin_handlers=not self._handlers_registered,
        )
        self._handlers_registered = True
        session.register_component("data_loader", self.loader)
        session.register_component("credential_provider", credentials)
        return session

    def config(self, **options: Any) -> AioConfig:
        """botocore's client `Config(**options)`, its connections on the shared TLS contexts."""
        return AioConfig(http_session_cls=self._http_session_cls, **options)
