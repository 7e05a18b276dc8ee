#!/usr/bin/env node
// Test OpenID Provider (oidc-provider 9.x) for fedgate's integration tests, on HTTPS.
//
//   node server.mjs --port P --cert PEM --key PEM --jwks FILE --client-id ID --redirect-uri URI
//                   [--host 127.0.0.1] [--id-token-alg ALG] [--cookie-key K]
//
// Run the copy that install.sh puts in CACHE_DIR/oidc (next to its node_modules).
// Issuer: https://127.0.0.1:<port> (the bound port, so --port 0 works). One public client
// (token_endpoint_auth_method none, PKCE S256 required, require_auth_time), ID tokens signed
// with the FIRST key of --jwks (alg from that key; RS256 by default), later keys stay published
// at /jwks. Account "alice" (email alice@company.com). `conformIdTokenClaims: false`, so
// email, acr and amr go into the ID token.
//
// Custom interaction routes (no browser; no dev pages):
//   GET  /interaction/:uid        -> JSON {uid, prompt, params, login_url}
//   POST /interaction/:uid/login  form: login=alice, acr=..., amr=a,b, age=<seconds since sign-in>
//        completes the login (accountId, acr, amr, ts = now - age) and the consent (a Grant for
//        the requested scope) with interactionFinished -> 303 to the authorization resume URL.
// Prints "READY <port>" on stdout once listening; exits on SIGTERM/SIGINT.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { randomBytes } from 'node:crypto';

import Provider from 'oidc-provider';

function usage(msg) {
  if (msg) console.error(`server.mjs: ${msg}`);
  console.error('usage: node server.mjs --port P --cert PEM --key PEM --jwks FILE --client-id ID --redirect-uri URI '
    + '[--host H] [--id-token-alg ALG] [--cookie-key K]');
  process.exit(2);
}

const known = ['port', 'cert', 'key', 'jwks', 'client-id', 'redirect-uri', 'host', 'id-token-alg', 'cookie-key'];
const args = { host: '127.0.0.1' };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 1) {
  const a = argv[i];
  if (!a.startsWith('--')) usage(`unexpected argument ${a}`);
  const name = a.slice(2);
  if (!known.includes(name)) usage(`unknown option ${a}`);
  if (argv[i + 1] === undefined) usage(`${a} needs a value`);
  args[name] = argv[i + 1];
  i += 1;
}
for (const r of ['port', 'cert', 'key', 'jwks', 'client-id', 'redirect-uri']) {
  if (!args[r]) usage(`--${r} is required`);
}

const ACCOUNTS = {
  alice: { sub: 'alice', email: 'alice@company.com', email_verified: true },
};

const jwks = JSON.parse(readFileSync(args.jwks, 'utf8'));
if (!Array.isArray(jwks.keys) || jwks.keys.length === 0) usage(`${args.jwks} has no keys`);
const first = jwks.keys[0];
function defaultAlg(jwk) {
  if (jwk.alg) return jwk.alg;
  if (jwk.kty === 'RSA') return 'RS256';
  if (jwk.kty === 'EC' && jwk.crv === 'P-256') return 'ES256';
  if (jwk.kty === 'OKP') return 'EdDSA';
  throw new Error(`cannot pick an alg for the first key (kty ${jwk.kty})`);
}
const idTokenAlg = args['id-token-alg'] || defaultAlg(first);
const cookieKey = args['cookie-key'] || 'fedgate-test-oidc-cookie-key-not-secret';

function readBody(req, limit = 64 * 1024) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (c) => {
      size += c.length;
      if (size > limit) {
        reject(new Error('body too large'));
        req.destroy();
      } else {
        chunks.push(c);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendJson(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function buildProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: [{
      client_id: args['client-id'],
      redirect_uris: [args['redirect-uri']],
      response_types: ['code'],
      grant_types: ['authorization_code'],
      token_endpoint_auth_method: 'none',
      require_auth_time: true,
      id_token_signed_response_alg: idTokenAlg,
    }],
    jwks,
    pkce: { required: () => true },
    conformIdTokenClaims: false,
    claims: {
      openid: ['sub', 'acr', 'amr', 'auth_time'],
      email: ['email', 'email_verified'],
    },
    cookies: { keys: [cookieKey] },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(ctx, id) {
      const account = ACCOUNTS[id];
      if (!account) return undefined;
      return { accountId: id, async claims() { return { ...account }; } };
    },
    async renderError(ctx, out) {
      ctx.type = 'json';
      ctx.body = out;
    },
  });
  provider.on('server_error', (ctx, err) => console.error('oidc server_error:', err));
  return provider;
}

async function interaction(provider, req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (e) {
    return sendJson(res, 400, { error: 'invalid_interaction', error_description: String(e.message || e) });
  }
  if (details.uid !== uid) {
    return sendJson(res, 400, { error: 'invalid_interaction', error_description: 'uid does not match the cookie' });
  }
  if (req.method === 'GET' && !action) {
    return sendJson(res, 200, {
      uid: details.uid,
      prompt: { name: details.prompt.name, reasons: details.prompt.reasons, details: details.prompt.details },
      params: details.params,
      login_url: `/interaction/${details.uid}/login`,
    });
  }
  if (req.method !== 'POST' || action !== 'login') {
    return sendJson(res, 405, { error: 'method_not_allowed' });
  }
  const form = new URLSearchParams(await readBody(req));
  const accountId = form.get('login') || 'alice';
  if (!ACCOUNTS[accountId]) {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: `unknown account ${accountId}`,
    }, { mergeWithLastSubmission: false });
  }
  const now = Math.floor(Date.now() / 1000);
  const age = Number.parseInt(form.get('age') || '0', 10);
  if (!Number.isFinite(age) || age < 0) return sendJson(res, 400, { error: 'invalid age' });
  const amr = (form.get('amr') || 'pwd').split(',').map((s) => s.trim()).filter(Boolean);
  const acr = form.get('acr') || 'urn:fedgate:acr:pwd';

  const clientId = details.params.client_id;
  let grant;
  if (details.grantId) grant = await provider.Grant.find(details.grantId);
  if (!grant) grant = new provider.Grant({ accountId, clientId });
  const scope = details.params.scope || 'openid';
  grant.addOIDCScope(scope);
  const pd = details.prompt.details || {};
  if (pd.missingOIDCScope) grant.addOIDCScope(pd.missingOIDCScope.join(' '));
  if (pd.missingOIDCClaims) grant.addOIDCClaims(pd.missingOIDCClaims);
  if (pd.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(pd.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const grantId = await grant.save();

  const result = { consent: { grantId } };
  if (details.prompt.name === 'login' || !details.session) {
    result.login = {
      accountId, acr, amr, ts: now - age, remember: true,
    };
  }
  return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

const tls = { cert: readFileSync(args.cert), key: readFileSync(args.key) };
let handler = (req, res) => sendJson(res, 503, { error: 'starting' });
const server = createServer(tls, (req, res) => handler(req, res));
server.on('tlsClientError', () => {});

server.listen(Number(args.port), args.host, () => {
  const { port } = server.address();
  const host = args.host.includes(':') ? `[${args.host}]` : args.host;
  const issuer = `https://${host}:${port}`;
  const provider = buildProvider(issuer);
  const callback = provider.callback();
  handler = (req, res) => {
    const m = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/([a-z]+))?\/?(?:\?.*)?$/.exec(req.url);
    if (m) {
      interaction(provider, req, res, m[1], m[2]).catch((e) => {
        console.error('interaction error:', e);
        if (!res.headersSent) sendJson(res, 500, { error: 'server_error', error_description: String(e.message || e) });
      });
      return;
    }
    callback(req, res);
  };
  console.log(`READY ${port}`);
  console.error(`server.mjs: issuer ${issuer}, id_token alg ${idTokenAlg}, signing kid ${first.kid}, `
    + `${jwks.keys.length} key(s) published, instance ${randomBytes(4).toString('hex')}`);
});
server.on('error', (e) => {
  console.error(`server.mjs: ${e.message}`);
  process.exit(1);
});

function stop() {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
