"""Calls bankauth from Python: create a user, fetch it back, issue a widget
token and a data token, connect a bank (CreateAuthorizationUrl, the user's
browser at the provider, ExchangeAuthorizationCode with the state and code),
then show two errors with their google.rpc details.

Usage: python3 client.py [ADDRESS]     (default $BANKAUTH_ADDR or 127.0.0.1:50051)
Set BANKAUTH_API_KEY to send `authorization: Bearer <key>` (not needed for the demo),
and BANKAUTH_REDIRECT_URI to one of the provider's redirect_uris (default: the demo's).
The stubs come from proto/ (see run.sh). Tokens are secrets: this prints
their length and scopes, never the tokens themselves.
"""

import os
import sys
import urllib.error
import urllib.request
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from bankauth.v1 import auth_service_pb2 as pb
from bankauth.v1 import auth_service_pb2_grpc as pb_grpc


def describe_token(rpc, token):
    expire = datetime.fromtimestamp(token.expire_time.seconds, timezone.utc)
    print(
        f"{rpc} scopes={','.join(token.scopes)} token_type={token.token_type}"
        f" token_length={len(token.access_token)}"
        f" expire_time={expire.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    )


def describe_error(rpc, error):
    """Prints a failed call's code, message and decoded google.rpc details."""
    print(f"{rpc} error code={error.code().name} message={error.details()}")
    status = rpc_status.from_call(error)  # decodes grpc-status-details-bin
    for detail in status.details if status else []:
        info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            metadata = " ".join(f"{k}={v}" for k, v in sorted(info.metadata.items()))
            print(f"  ErrorInfo reason={info.reason} domain={info.domain} {metadata}")
        elif detail.Unpack(bad_request):
            for violation in bad_request.field_violations:
                print(f"  BadRequest field={violation.field} description={violation.description}")


class _KeepRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # hand the redirect back instead of following it


def play_the_browser(url, redirect_uri):
    """What the user's browser does with the URL: here the provider is the
    sandbox, which consents at once and redirects to redirect_uri. A real app
    redirects the browser and reads `code` and `state` in its callback."""
    opener = urllib.request.build_opener(_KeepRedirect)
    for _ in range(5):
        try:
            opener.open(url, timeout=10)
            raise RuntimeError("the provider answered without redirecting")
        except urllib.error.HTTPError as redirect:
            url = redirect.headers.get("Location", "")
            if redirect.code not in (302, 303) or not url:
                raise
        if url.startswith(redirect_uri):
            query = parse_qs(urlsplit(url).query)
            return query["code"][0], query["state"][0]
    raise RuntimeError("too many redirects")


def main():
    address = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("BANKAUTH_ADDR", "127.0.0.1:50051")
    api_key = os.environ.get("BANKAUTH_API_KEY")
    redirect_uri = os.environ.get("BANKAUTH_REDIRECT_URI", "http://127.0.0.1/callback")
    metadata = [("authorization", f"Bearer {api_key}")] if api_key else []

    with grpc.insecure_channel(address) as channel:  # grpc.secure_channel(...) with TLS
        auth = pb_grpc.AuthServiceStub(channel)

        user = auth.CreateUser(
            pb.CreateUserRequest(
                external_id="python-customer-1",
                name=pb.PersonName(given_name="Alex", family_name="Taylor"),
                emails=[pb.Email(value="alex@example.com", primary=True)],
            ),
            metadata=metadata,
            timeout=10,
        ).user
        print(f"CreateUser id={user.id} external_id={user.external_id}")

        fetched = auth.GetUser(pb.GetUserRequest(user_id=user.id), metadata=metadata, timeout=10).user
        print(f"GetUser id={fetched.id} external_id={fetched.external_id} email={fetched.emails[0].value}")

        widget = auth.IssueWidgetToken(
            pb.IssueWidgetTokenRequest(user_id=user.id), metadata=metadata, timeout=10
        )
        describe_token("IssueWidgetToken", widget.token)

        data = auth.IssueDataToken(
            pb.IssueDataTokenRequest(user_id=user.id, scopes=["transactions:read:all", "accounts:read"]),
            metadata=metadata,
            timeout=10,
        )
        describe_token("IssueDataToken", data.token)

        # Connect a bank: bankauth signs the request; the user's browser opens the URL.
        started = auth.CreateAuthorizationUrl(
            pb.CreateAuthorizationUrlRequest(
                user_id=user.id, redirect_uri=redirect_uri, connect_bank=pb.ConnectBank()
            ),
            metadata=metadata,
            timeout=10,
        )
        print(f"CreateAuthorizationUrl state={started.state}")
        code, state = play_the_browser(started.url, redirect_uri)
        exchanged = auth.ExchangeAuthorizationCode(
            pb.ExchangeAuthorizationCodeRequest(state=state, code=code), metadata=metadata, timeout=10
        ).token_set
        claims = exchanged.id_token_claims
        print(
            f"ExchangeAuthorizationCode sub={claims.sub} connection_id={claims.connection_id}"
            f" scopes={','.join(exchanged.scopes)} refresh_token={'yes' if exchanged.refresh_token else 'no'}"
        )

        # Errors: a user that does not exist, and a scope outside the allow-list.
        try:
            auth.GetUser(pb.GetUserRequest(user_id="no-such-user"), metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            describe_error("GetUser", error)
        try:
            auth.IssueDataToken(
                pb.IssueDataTokenRequest(user_id=user.id, scopes=["payments:write"]),
                metadata=metadata,
                timeout=10,
            )
        except grpc.RpcError as error:
            describe_error("IssueDataToken", error)


if __name__ == "__main__":
    main()
