#!/usr/bin/env python3
"""An independent SCIM 2.0 server for bankauth's interop tests.

scim2-server (PyPI; RFC 7643/7644, not written here) serves the users under
``/scim`` (``/scim/users``, ``/scim/users/{id}``, as Moneyhub does), kept in
memory. Requests must carry a bearer JWT access token issued by ``--issuer``
and signed by a key of its JWKS (``--jwks-url``), with scope
``scim_user:read`` to read and ``scim_user:write`` to write. The check goes
through scim2-server's documented extension points: the application's
``check_auth``/``get_subject`` authenticate the request (401 otherwise) and
the service's ``authorize`` checks the operation against the token's scopes
(403 otherwise); both answer with a SCIM error body.

Moneyhub's subtenant schema extension is registered on the User resource
type, so a user may carry it.

``GET /__stats`` answers the requests served so far by method, the users
stored, and the statuses answered. Each request is logged to stderr, without
its Authorization header. Prints ``listening <port>`` on stdout when ready.

Install what it needs (no virtualenv):
    python3 -m pip install -r tests/interop/scim/requirements.txt
"""

import argparse
import json
import logging
import sys
import threading
from collections import Counter

PIP_COMMAND = "python3 -m pip install -r tests/interop/scim/requirements.txt"
PINNED_SERVER = "0.8."

try:
    from importlib.metadata import version

    import jwt
    from scim2_models import (
        AuthenticationScheme,
        External,
        ForbiddenException,
        Reference,
        ResourceType,
        SchemaExtension,
        ScimProvider,
        UnauthorizedException,
    )
    from scim2_models import Schema
    from scim2_server.applications.wsgi import WSGIApplication
    from scim2_server.memory import InMemoryStorage
    from scim2_server.routing import Operation
    from scim2_server.service import ScimService
    from scim2_server.utils import (
        load_default_resource_types,
        load_default_schemas,
        load_default_service_provider_config,
    )
except ImportError as error:  # pragma: no cover - the harness reports it
    print(
        f"scim peer: a Python package is missing ({error}); install them with: {PIP_COMMAND}",
        file=sys.stderr,
    )
    sys.exit(3)

if not version("scim2-server").startswith(PINNED_SERVER):
    print(
        f"scim peer: scim2-server {version('scim2-server')} is installed, "
        f"the pinned one is {PINNED_SERVER}x; run: {PIP_COMMAND}",
        file=sys.stderr,
    )
    sys.exit(3)

from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server  # noqa: E402
from socketserver import ThreadingMixIn  # noqa: E402
from wsgiref.util import application_uri  # noqa: E402

READ_SCOPE = "scim_user:read"
WRITE_SCOPE = "scim_user:write"
READ_OPERATIONS = {Operation.query, Operation.search, Operation.search_with_body}

SUBTENANT_SCHEMA = "urn:ietf:params:scim:schemas:extension:moneyhub:2.0:Subtenant"

log = logging.getLogger("scim-peer")


def subtenant_schema() -> Schema:
    """Moneyhub's subtenant extension, as bankauth sends it: name and providerId."""

    def attribute(name: str, description: str) -> dict:
        return {
            "name": name,
            "type": "string",
            "multiValued": False,
            "description": description,
            "required": False,
            "caseExact": True,
            "mutability": "readWrite",
            "returned": "default",
            "uniqueness": "none",
        }

    return Schema.model_validate(
        {
            "id": SUBTENANT_SCHEMA,
            "name": "Subtenant",
            "description": "Moneyhub subtenant of a tenant user",
            "attributes": [
                attribute("name", "The subtenant's name"),
                attribute("providerId", "The subtenant's id at its provider"),
            ],
        }
    )


def build_provider() -> ScimProvider:
    schemas = [*load_default_schemas().values(), subtenant_schema()]
    resource_types = []
    for resource_type in load_default_resource_types().values():
        if resource_type.id == "User":
            resource_type = resource_type.model_copy(
                update={
                    "schema_extensions": [
                        *(resource_type.schema_extensions or []),
                        SchemaExtension(schema_=SUBTENANT_SCHEMA, required=False),
                    ]
                }
            )
        resource_types.append(resource_type)
    config = load_default_service_provider_config()
    config.authentication_schemes = [
        AuthenticationScheme(
            type=AuthenticationScheme.Type.oauthbearertoken,
            name="OAuth Bearer Token",
            description="A JWT access token of the configured issuer",
            spec_uri=Reference[External]("https://datatracker.ietf.org/doc/html/rfc6750"),
            primary=True,
        )
    ]
    return ScimProvider.from_discovery(schemas, resource_types, config=config)


class ScopedService(ScimService):
    """Checks each operation against the scopes of the request's token."""

    def authorize(self, request, target, resource_type):
        scopes = request.subject or frozenset()
        needed = READ_SCOPE if target.operation in READ_OPERATIONS else WRITE_SCOPE
        if needed not in scopes:
            raise ForbiddenException(detail=f"the access token lacks scope {needed}")


class JwtBearerApplication(WSGIApplication):
    """Accepts only JWT access tokens of one issuer, verified with its JWKS."""

    @staticmethod
    def get_base_url(environ):
        # Resources live at /scim/Users/{id}, as Moneyhub's do, not under /v2.
        return application_uri(environ).rstrip("/")

    def __init__(self, storage, provider, service, issuer, jwks_url, algorithms, audience):
        super().__init__(storage, provider, service)
        self.issuer = issuer
        self.algorithms = algorithms
        self.audience = audience
        self.jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=60, timeout=5)

    def get_subject(self, request):
        return getattr(request, "_scopes", None)

    def check_auth(self, request):
        scheme, _, token = (request.header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedException(detail="a bearer access token is required")
        try:
            key = self.jwks.get_signing_key_from_jwt(token.strip())
            claims = jwt.decode(
                token.strip(),
                key=key.key,
                algorithms=self.algorithms,
                issuer=self.issuer,
                audience=self.audience,
                options={
                    "require": ["exp", "iss"],
                    "verify_aud": self.audience is not None,
                },
            )
        except (jwt.PyJWTError, ValueError) as error:
            # The reason (expired, wrong issuer, bad signature, unknown kid),
            # never the token.
            raise UnauthorizedException(
                detail=f"the access token is invalid: {type(error).__name__}: {error}"
            ) from None
        scope = claims.get("scope", "")
        if isinstance(scope, list):
            scopes = frozenset(scope)
        else:
            scopes = frozenset(str(scope).split())
        request._scopes = scopes


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_method = Counter()
        self.by_status = Counter()

    def count(self, method: str, status: str):
        with self.lock:
            self.by_method[method] += 1
            self.by_status[status.split(" ", 1)[0]] += 1

    def snapshot(self, users: int) -> dict:
        with self.lock:
            return {
                "requests": dict(self.by_method),
                "statuses": dict(self.by_status),
                "users": users,
            }


def root_app(scim, storage, stats):
    """Mounts the SCIM application under /scim, the stats at /__stats."""

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        if path == "/__stats" and method == "GET":
            body = json.dumps(stats.snapshot(_user_count(storage))).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if path == "/scim" or path.startswith("/scim/"):
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + "/scim"
            environ["PATH_INFO"] = path[len("/scim"):]
            answered = {}

            def recording_start_response(status, headers, exc_info=None):
                answered["status"] = status
                return start_response(status, headers, exc_info)

            chunks = list(scim(environ, recording_start_response))
            status = answered.get("status", "?")
            stats.count(method, status)
            detail = ""
            if not status.startswith("2"):
                try:
                    detail = " " + json.loads(b"".join(chunks)).get("detail", "")
                except (ValueError, AttributeError):
                    pass
            # wsgiref reports a missing Content-Type as text/plain: only a
            # request with a body has one worth logging.
            has_body = method in ("POST", "PUT", "PATCH")
            content_type = environ.get("CONTENT_TYPE") if has_body else None
            log.info(
                "%s %s%s -> %s%s",
                method,
                path,
                f" content-type={content_type}" if content_type else "",
                status,
                detail,
            )
            return chunks
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: SCIM is under /scim\n"]

    return app


def _user_count(storage) -> int:
    return sum(
        1
        for resource in storage.resources
        if resource.meta is not None and resource.meta.resource_type == "User"
    )


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    """The SCIM application logs each request itself."""

    def log_message(self, format, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--issuer", required=True, help="the tokens' required iss")
    parser.add_argument("--jwks-url", required=True, help="the issuer's JWKS")
    parser.add_argument(
        "--algorithms",
        default="RS256,ES256",
        help="accepted JWS algorithms, comma-separated (never HS* nor none); "
        "default RS256 (Moneyhub, oidc-provider) and ES256 (bankauth's sandbox)",
    )
    parser.add_argument("--audience", help="the tokens' required aud; unchecked by default")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args()
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    if any(not a[:2] in ("RS", "PS", "ES", "Ed") for a in algorithms):
        parser.error("only asymmetric algorithms are accepted")

    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    # Each request is logged once, below; the library's own lines would repeat it.
    logging.getLogger("scim2_server").setLevel(logging.WARNING)
    provider = build_provider()
    storage = InMemoryStorage()
    scim = JwtBearerApplication(
        storage,
        provider,
        ScopedService(provider),
        issuer=args.issuer,
        jwks_url=args.jwks_url,
        algorithms=algorithms,
        audience=args.audience,
    )
    stats = Stats()
    server = make_server(
        "127.0.0.1",
        args.port,
        root_app(scim, storage, stats),
        server_class=ThreadingServer,
        handler_class=QuietHandler,
    )
    port = server.server_address[1]
    log.info("serving SCIM at http://127.0.0.1:%d/scim for issuer %s", port, args.issuer)
    print(f"listening {port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
