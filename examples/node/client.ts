// Calls bankauth from Node: create a user, fetch it back, issue a widget
// token and a data token, connect a bank (CreateAuthorizationUrl, the user's
// browser at the provider, ExchangeAuthorizationCode with the state and code),
// then show two errors with their google.rpc details.
//
// Usage: node client.js [ADDRESS]     (default $BANKAUTH_ADDR or 127.0.0.1:50051)
// Set BANKAUTH_API_KEY to send `authorization: Bearer <key>` (not needed for the demo),
// and BANKAUTH_REDIRECT_URI to one of the provider's redirect_uris (default: the demo's).
// @grpc/proto-loader builds the stubs from proto/ when this starts. Tokens are
// secrets: this prints their length and scopes, never the tokens themselves.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_DIR = path.join(__dirname, '..', '..', 'proto');
const definition = protoLoader.loadSync('bankauth/v1/auth_service.proto', {
  includeDirs: [PROTO_DIR],
  keepCase: true,
  longs: Number,
  defaults: true,
});
const { AuthService } = grpc.loadPackageDefinition(definition).bankauth.v1;

// google.rpc.Status and its detail messages, to decode an error's details
// (google/rpc/*.proto here are Google's googleapis files, unchanged, Apache-2.0).
const rpcTypes = protobuf.loadSync([
  path.join(__dirname, 'google', 'rpc', 'status.proto'),
  path.join(__dirname, 'google', 'rpc', 'error_details.proto'),
]);
const Status = rpcTypes.lookupType('google.rpc.Status');

const address = process.argv[2] || process.env.BANKAUTH_ADDR || '127.0.0.1:50051';
const redirectUri = process.env.BANKAUTH_REDIRECT_URI || 'http://127.0.0.1/callback';
const metadata = new grpc.Metadata();
if (process.env.BANKAUTH_API_KEY) {
  metadata.set('authorization', `Bearer ${process.env.BANKAUTH_API_KEY}`);
}
// grpc.credentials.createSsl(ca) instead, when bankauth serves TLS.
const auth = new AuthService(address, grpc.credentials.createInsecure());

/** Calls `method` with `request`; resolves to the response. */
function call(method, request) {
  const deadline = new Date(Date.now() + 10_000);
  return new Promise((resolve, reject) => {
    auth[method](request, metadata, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

function describeToken(rpc, token) {
  const expire = new Date(token.expire_time.seconds * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
  console.log(
    `${rpc} scopes=${token.scopes.join(',')} token_type=${token.token_type}` +
      ` token_length=${token.access_token.length} expire_time=${expire}`,
  );
}

/** Prints a failed call's code, message and decoded google.rpc details. */
function describeError(rpc, error) {
  console.log(`${rpc} error code=${grpc.status[error.code]} message=${error.details}`);
  const [bytes] = error.metadata.get('grpc-status-details-bin');
  const details = bytes ? Status.decode(bytes).details : [];
  for (const any of details) {
    const type = rpcTypes.lookupType(any.type_url.split('/').pop());
    const detail = type.decode(any.value);
    if (type.fullName === '.google.rpc.ErrorInfo') {
      const metadata = Object.keys(detail.metadata).sort().map((k) => `${k}=${detail.metadata[k]}`);
      console.log(`  ErrorInfo reason=${detail.reason} domain=${detail.domain} ${metadata.join(' ')}`);
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
async function playTheBrowser(url) {
  for (let hop = 0; hop < 5; hop += 1) {
    const response = await fetch(url, { redirect: 'manual', signal: AbortSignal.timeout(10_000) });
    url = response.headers.get('location');
    if (![302, 303].includes(response.status) || !url) {
      throw new Error(`the provider answered ${response.status} without redirecting`);
    }
    if (url.startsWith(redirectUri)) {
      const query = new URL(url).searchParams;
      return { code: query.get('code'), state: query.get('state') };
    }
  }
  throw new Error('too many redirects');
}

async function main() {
  const { user } = await call('CreateUser', {
    external_id: 'node-customer-1',
    name: { given_name: 'Alex', family_name: 'Taylor' },
    emails: [{ value: 'alex@example.com', primary: true }],
  });
  console.log(`CreateUser id=${user.id} external_id=${user.external_id}`);

  const fetched = (await call('GetUser', { user_id: user.id })).user;
  console.log(`GetUser id=${fetched.id} external_id=${fetched.external_id} email=${fetched.emails[0].value}`);

  const widget = await call('IssueWidgetToken', { user_id: user.id });
  describeToken('IssueWidgetToken', widget.token);

  const data = await call('IssueDataToken', {
    user_id: user.id,
    scopes: ['transactions:read:all', 'accounts:read'],
  });
  describeToken('IssueDataToken', data.token);

  // Connect a bank: bankauth signs the request; the user's browser opens the URL.
  const started = await call('CreateAuthorizationUrl', {
    user_id: user.id,
    redirect_uri: redirectUri,
    connect_bank: {},
  });
  console.log(`CreateAuthorizationUrl state=${started.state}`);
  const { code, state } = await playTheBrowser(started.url);
  const { token_set: tokenSet } = await call('ExchangeAuthorizationCode', { state, code });
  const claims = tokenSet.id_token_claims;
  console.log(
    `ExchangeAuthorizationCode sub=${claims.sub} connection_id=${claims.connection_id}` +
      ` scopes=${tokenSet.scopes.join(',')} refresh_token=${tokenSet.refresh_token ? 'yes' : 'no'}`,
  );

  // Errors: a user that does not exist, and a scope outside the allow-list.
  await call('GetUser', { user_id: 'no-such-user' }).catch((e) => describeError('GetUser', e));
  await call('IssueDataToken', { user_id: user.id, scopes: ['payments:write'] }).catch((e) =>
    describeError('IssueDataToken', e),
  );
  auth.close();
}

main().catch((error) => {
  console.error(`bankauth call failed: ${error.message}`);
  process.exit(1);
});
