// panva's oidc-provider, configured like Moneyhub's identity service, for
// bankauth's interop tests (tests/api/interop/oidc_peer.rs starts it).
//
//   node provider.mjs            (after `npm ci` in this directory)
//
// Environment:
//   OIDC_PORT              port to bind on 127.0.0.1 (0: any free one)
//   OIDC_CLIENT_ID         the one client's id
//   OIDC_CLIENT_JWKS_FILE  path of the client's public JWKS ({"keys":[…]}),
//                          whose private key bankauth signs its assertions with
//   OIDC_REDIRECT_URI      the client's registered redirect URI
//
// It prints `listening <port>` on stdout once ready, and one line per request
// on stderr (never a token, code or assertion: only routes, grant types and
// the provider's own error codes and descriptions).
//
// Like Moneyhub's identity service:
//   - the issuer has an /oidc path: http://127.0.0.1:<port>/oidc;
//   - the client authenticates with private_key_jwt (RS256), single-use jti;
//   - access tokens are JWTs (RS256, typ at+jwt) carrying sub and scope;
//   - client_credentials honours the `sub` form parameter (a user token);
//   - token responses carry expires_at beside expires_in;
//   - authorization_code with PKCE, refresh_token, and the development
//     login/consent pages (devInteractions) that a test drives over HTTP;
//   - authorization requests as request objects signed with the client's
//     key (RS256), pushed (PAR, RFC 9126) or in the URL, with the `claims`
//     parameter naming the user (devInteractions signs in whoever is typed:
//     the test types that user).
// Besides /oidc, GET /__stats answers counters for tests to read.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import Provider from 'oidc-provider';
// The library's own client_credentials grant, re-registered below with `sub`
// among its parameters (registerGrantType is the documented way to replace a
// grant; the handler is the library's, so its checks all stay in place).
import { handler as clientCredentialsHandler } from 'oidc-provider/lib/actions/grants/client_credentials.js';
import * as grantHelpers from 'oidc-provider/lib/helpers/grants.js';

const env = (name, fallback) => {
  const value = process.env[name];
  if (value === undefined || value === '') {
    if (fallback === undefined) {
      console.error(`provider.mjs: ${name} is required`);
      process.exit(2);
    }
    return fallback;
  }
  return value;
};

const port = Number(env('OIDC_PORT', '0'));
const clientId = env('OIDC_CLIENT_ID', '82423947-9d71-42b3-a3e0-86d1f0ab091f');
const clientJwks = JSON.parse(fs.readFileSync(env('OIDC_CLIENT_JWKS_FILE'), 'utf8'));
const redirectUri = env('OIDC_REDIRECT_URI', 'https://app.example.com/callback');

// The scopes bankauth asks Moneyhub for: user and application tokens, SCIM.
const API_SCOPES = [
  'widget_authentication',
  'accounts:read',
  'accounts_details:read',
  'transactions:read:all',
  'categories:read',
  'scim_user:read',
  'scim_user:write',
];
// The one resource server every access token is for (a JWT, RS256).
const API_RESOURCE = 'https://api.moneyhub.example/';
const TOKEN_LIFETIME_SECS = 7200;

const log = (line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`);

const stats = {
  requests: 0,
  token_requests: 0,
  token_requests_by_grant: {},
  token_errors: {},
  jwks_requests: 0,
  discovery_requests: 0,
  authorization_requests: 0,
  pushed_authorization_requests: 0,
  pushed_authorization_errors: {},
};

// The provider's own signing key for ID tokens and access tokens: fresh each run.
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: crypto.randomBytes(8).toString('hex'),
  alg: 'RS256',
  use: 'sig',
};

async function startProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: clientId,
        token_endpoint_auth_method: 'private_key_jwt',
        token_endpoint_auth_signing_alg: 'RS256',
        jwks: clientJwks,
        grant_types: ['client_credentials', 'authorization_code', 'refresh_token'],
        response_types: ['code'],
        redirect_uris: [redirectUri],
        request_object_signing_alg: 'RS256',
        // The API scopes are the resource server's (getResourceServerInfo
        // below): a client's `scope` may only list the OpenID ones.
        scope: 'openid offline_access',
      },
    ],
    jwks: { keys: [signingJwk] },
    cookies: { keys: ['interop-only-not-a-secret'] },
    scopes: ['openid', 'offline_access'],
    claims: { openid: ['sub'] },
    findAccount: async (_ctx, sub) => ({
      accountId: sub,
      claims: async () => ({ sub }),
    }),
    pkce: { required: () => false },
    ttl: {
      AccessToken: TOKEN_LIFETIME_SECS,
      ClientCredentials: TOKEN_LIFETIME_SECS,
      IdToken: TOKEN_LIFETIME_SECS,
      AuthorizationCode: 60,
      RefreshToken: 14 * 24 * 3600,
      Grant: 14 * 24 * 3600,
      Interaction: 600,
      Session: 3600,
    },
    features: {
      devInteractions: { enabled: true },
      claimsParameter: { enabled: true },
      pushedAuthorizationRequests: { enabled: true },
      requestObjects: { enabled: true },
      clientCredentials: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => API_RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resource, client) => {
          if (resource !== API_RESOURCE) {
            throw new Provider.errors.InvalidTarget();
          }
          return {
            scope: API_SCOPES.join(' '),
            // As in Moneyhub's documented tokens: the audience is the client.
            audience: client.clientId,
            accessTokenTTL: TOKEN_LIFETIME_SECS,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    formats: {
      customizers: {
        // A user token: client_credentials with `sub` names the user.
        jwt: async (ctx, token, jwt) => {
          const sub = ctx?.oidc?.params?.sub;
          if (token.kind === 'ClientCredentials' && typeof sub === 'string' && sub) {
            jwt.payload.sub = sub;
          }
        },
      },
    },
  });

  // Only client_credentials, with the library's own handler and parameters
  // plus `sub`. resourceIndicators is on, so `resource` stays allowed too.
  const helpers = Object.fromEntries(
    Object.entries(grantHelpers).map(([name, helper]) => [name, helper.bind(undefined, provider)]),
  );
  provider.registerGrantType(
    'client_credentials',
    clientCredentialsHandler.bind(undefined, provider, helpers),
    ['scope', 'resource', 'sub'],
    ['resource'],
  );

  // Counts, logs, and adds expires_at beside expires_in on token responses.
  provider.use(async (ctx, next) => {
    await next();
    const route = ctx.oidc?.route;
    if (route === 'token') {
      const grant = ctx.oidc.params?.grant_type ?? 'unknown';
      stats.token_requests += 1;
      stats.token_requests_by_grant[grant] = (stats.token_requests_by_grant[grant] ?? 0) + 1;
      const body = ctx.body;
      if (ctx.status === 200 && body && typeof body.expires_in === 'number') {
        body.expires_at = Math.floor(Date.now() / 1000) + body.expires_in;
      }
      if (ctx.status >= 400 && body && body.error) {
        stats.token_errors[body.error] = (stats.token_errors[body.error] ?? 0) + 1;
      }
      const sub = ctx.oidc.params?.sub ? ' sub=yes' : '';
      const outcome = body && body.error
        ? ` error=${body.error} description=${JSON.stringify(body.error_description ?? '')}`
        : '';
      log(`token grant=${grant}${sub} scope=${JSON.stringify(ctx.oidc.params?.scope ?? '')} status=${ctx.status}${outcome}`);
    } else if (route === 'jwks') {
      stats.jwks_requests += 1;
    } else if (route === 'discovery') {
      stats.discovery_requests += 1;
    } else if (route === 'authorization') {
      stats.authorization_requests += 1;
    } else if (route === 'pushed_authorization_request') {
      stats.pushed_authorization_requests += 1;
      const body = ctx.body;
      if (ctx.status >= 400 && body && body.error) {
        stats.pushed_authorization_errors[body.error] = (stats.pushed_authorization_errors[body.error] ?? 0) + 1;
      }
      log(`par status=${ctx.status}${body && body.error ? ` error=${body.error} description=${JSON.stringify(body.error_description ?? '')}` : ''}`);
    }
  });

  // The provider's own account of each failure, for a failing test's log tail.
  for (const event of ['grant.error', 'authorization.error', 'server_error', 'jwks.error',
    'pushed_authorization_request.error',
    'discovery.error', 'revocation.error', 'interaction.error']) {
    provider.on(event, (_ctx, error) => {
      const detail = error?.error_detail ? ` detail=${JSON.stringify(error.error_detail)}` : '';
      log(`event ${event}: ${error?.error ?? error?.name} ${JSON.stringify(error?.error_description ?? error?.message ?? '')}${detail}`);
    });
  }

  return provider;
}

const server = http.createServer();
server.listen(port, '127.0.0.1', async () => {
  const actualPort = server.address().port;
  const issuer = `http://127.0.0.1:${actualPort}/oidc`;
  const provider = await startProvider(issuer);
  const callback = provider.callback();
  server.on('request', (req, res) => {
    stats.requests += 1;
    const started = Date.now();
    const path = req.url.split('?')[0];
    res.on('finish', () => log(`${req.method} ${path} ${res.statusCode} ${Date.now() - started}ms`));
    if (req.method === 'GET' && path === '/__stats') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(stats));
      return;
    }
    // Mounted under /oidc: the provider sees paths relative to its issuer.
    // As Express mounts it: originalUrl keeps the prefix, which the provider
    // reads to build its endpoint URLs.
    if (path === '/oidc' || path.startsWith('/oidc/')) {
      req.originalUrl = req.url;
      req.url = req.url.slice('/oidc'.length) || '/';
      callback(req, res);
      return;
    }
    res.statusCode = 404;
    res.end('not found');
  });
  process.stdout.write(`listening ${actualPort}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
