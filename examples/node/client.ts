// Calls bankauth from Node with TypeScript: create a user, fetch it back,
// issue a widget token and a data token, connect a bank
// (CreateAuthorizationUrl, the user's browser at the provider,
// ExchangeAuthorizationCode with the state and code), then show two errors
// with their google.rpc details.
//
// Usage: ./run.sh [ADDRESS]     (default $BANKAUTH_ADDR or 127.0.0.1:50051)
// Set BANKAUTH_API_KEY to send `authorization: Bearer <key>` (not needed for the demo),
// and BANKAUTH_REDIRECT_URI to one of the provider's redirect_uris (default: the demo's).
// The types come from proto/ by proto-loader-gen-types (run.sh writes them to
// gen/); tsc checks every request and response against them. At run time
// @grpc/proto-loader loads the same proto with the same options. Tokens are
// secrets: this prints their length and scopes, never the tokens themselves.

import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

import type { ProtoGrpcType } from './gen/auth_service';
import type { AccessToken__Output } from './gen/bankauth/v1/AccessToken';
import type { AuthServiceClient } from './gen/bankauth/v1/AuthService';

const PROTO_DIR = path.join(__dirname, '..', '..', '..', 'proto');
// The options proto-loader-gen-types was given in run.sh, so the types match.
const definition = protoLoader.loadSync('bankauth/v1/auth_service.proto', {
  includeDirs: [PROTO_DIR],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});
const proto = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;

// google.rpc.Status and its detail messages, to decode an error's details
// (google/rpc/*.proto here are Google's googleapis files, unchanged, Apache-2.0).
const rpcTypes = protobuf.loadSync([
  path.join(__dirname, '..', 'google', 'rpc', 'status.proto'),
  path.join(__dirname, '..', 'google', 'rpc', 'error_details.proto'),
]);
const Status = rpcTypes.lookupType('google.rpc.Status');

const address = process.argv[2] || process.env.BANKAUTH_ADDR || '127.0.0.1:50051';
const redirectUri = process.env.BANKAUTH_REDIRECT_URI || 'http://127.0.0.1/callback';
const apiKey = process.env.BANKAUTH_API_KEY;

/** Gives every call a 10 s deadline and, when BANKAUTH_API_KEY is set, the API key. */
const perCall: grpc.Interceptor = (options, nextCall) =>
  new grpc.InterceptingCall(nextCall({ ...options, deadline: Date.now() + 10_000 }), {
    start(metadata, listener, next) {
      if (apiKey) metadata.set('authorization', `Bearer ${apiKey}`);
      next(metadata, listener);
    },
  });
// grpc.credentials.createSsl(ca) instead, when bankauth serves TLS.
const auth: AuthServiceClient = new proto.bankauth.v1.AuthService(
  address,
  grpc.credentials.createInsecure(),
  { interceptors: [perCall] },
);

/** Calls `method` of the client with `request`; resolves to the response. */
function call<Request, Response>(
  method: (request: Request, callback: grpc.requestCallback<Response>) => grpc.ClientUnaryCall,
  request: NoInfer<Request>,
): Promise<Response> {
  return new Promise((resolve, reject) => {
    method.call(auth, request, (error, response) =>
      error || response === undefined ? reject(error) : resolve(response),
    );
  });
}

function describeToken(rpc: string, token: AccessToken__Output | null) {
  if (!token?.expire_time) throw new Error(`${rpc} returned no token`);
  const expire = new Date(token.expire_time.seconds * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
  console.log(
    `${rpc} scopes=${token.scopes.join(',')} token_type=${token.token_type}` +
      ` token_length=${token.access_token.length} expire_time=${expire}`,
  );
}

/** Prints a failed call's code, message and decoded google.rpc details. */
function describeError(rpc: string, error: grpc.ServiceError) {
  console.log(`${rpc} error code=${grpc.status[error.code]} message=${error.details}`);
  const [bytes] = error.metadata.get('grpc-status-details-bin');
  const details = bytes instanceof Buffer ? Status.toObject(Status.decode(bytes)).details : [];
  for (const any of details as { type_url: string; value: Uint8Array }[]) {
    const type = rpcTypes.lookupType(any.type_url.split('/').pop() ?? '');
    const detail = type.toObject(type.decode(any.value));
    if (type.fullName === '.google.rpc.ErrorInfo') {
      const pairs = Object.keys(detail.metadata)
        .sort()
        .map((k) => `${k}=${detail.metadata[k]}`);
      console.log(`  ErrorInfo reason=${detail.reason} domain=${detail.domain} ${pairs.join(' ')}`);
    } else if (type.fullName === '.google.rpc.BadRequest') {
      for (const violation of detail.fieldViolations) {
        console.log(`  BadRequest field=${violation.field} description=${violation.description}`);
      }
    }
  }
}

/**
 * What the user's browser does with the URL: here the provider is the
 * sandbox, which consents at once and redirects to redirectUri. A real app
 * redirects the browser and reads `code` and `state` in its callback.
 */
async function playTheBrowser(url: string): Promise<{ code: string; state: string }> {
  for (let hop = 0; hop < 5; hop += 1) {
    const response = await fetch(url, { redirect: 'manual', signal: AbortSignal.timeout(10_000) });
    const location = response.headers.get('location');
    if (![302, 303].includes(response.status) || !location) {
      throw new Error(`the provider answered ${response.status} without redirecting`);
    }
    if (location.startsWith(redirectUri)) {
      const query = new URL(location).searchParams;
      return { code: query.get('code') ?? '', state: query.get('state') ?? '' };
    }
    url = location;
  }
  throw new Error('too many redirects');
}

async function main() {
  const { user } = await call(auth.CreateUser, {
    external_id: 'node-customer-1',
    name: { given_name: 'Alex', family_name: 'Taylor' },
    emails: [{ value: 'alex@example.com', primary: true }],
  });
  if (!user) throw new Error('CreateUser returned no user');
  console.log(`CreateUser id=${user.id} external_id=${user.external_id}`);

  const fetched = (await call(auth.GetUser, { user_id: user.id })).user;
  if (!fetched) throw new Error('GetUser returned no user');
  console.log(`GetUser id=${fetched.id} external_id=${fetched.external_id} email=${fetched.emails[0].value}`);

  const widget = await call(auth.IssueWidgetToken, { user_id: user.id });
  describeToken('IssueWidgetToken', widget.token);

  const data = await call(auth.IssueDataToken, {
    user_id: user.id,
    scopes: ['transactions:read:all', 'accounts:read'],
  });
  describeToken('IssueDataToken', data.token);

  // Connect a bank: bankauth signs the request; the user's browser opens the URL.
  const started = await call(auth.CreateAuthorizationUrl, {
    user_id: user.id,
    redirect_uri: redirectUri,
    connect_bank: {},
  });
  console.log(`CreateAuthorizationUrl state=${started.state}`);
  const { code, state } = await playTheBrowser(started.url);
  const { token_set: tokenSet } = await call(auth.ExchangeAuthorizationCode, { state, code });
  const claims = tokenSet?.id_token_claims;
  if (!tokenSet || !claims) throw new Error('ExchangeAuthorizationCode returned no ID token claims');
  console.log(
    `ExchangeAuthorizationCode sub=${claims.sub} connection_id=${claims.connection_id}` +
      ` scopes=${tokenSet.scopes.join(',')} refresh_token=${tokenSet.refresh_token ? 'yes' : 'no'}`,
  );

  // Errors: a user that does not exist, and a scope outside the allow-list.
  await call(auth.GetUser, { user_id: 'no-such-user' }).catch((e) => describeError('GetUser', e));
  await call(auth.IssueDataToken, { user_id: user.id, scopes: ['payments:write'] }).catch((e) =>
    describeError('IssueDataToken', e),
  );
  auth.close();
}

main().catch((error) => {
  console.error(`bankauth call failed: ${error.message}`);
  process.exit(1);
});
