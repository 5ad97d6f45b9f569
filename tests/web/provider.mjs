// A real OpenID provider (node-oidc-provider) on loopback for waiver's tests: authorization
// code with PKCE, client credentials with JWT access tokens, RP-initiated and back-channel
// logout, and a sign-in form whose "MFA" box sets `acr`/`amr` (for step-up).
//
// Environment: PORT (this provider), WAIVER_URL (waiver's public URL), CLIENT_SECRET (the
// `waiver` client's secret), ACCESS_TTL (seconds an access token lives; default 60).
// Accounts: any name signs in with any password; GROUPS below give their groups.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const waiver = process.env.WAIVER_URL;
const issuer = `http://127.0.0.1:${port}`;
const accessTtl = Number(process.env.ACCESS_TTL || 60);

// A fresh signing key (and `kid`) at every start: restarting the provider rotates its keys.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), use: 'sig', alg: 'RS256' };

const GROUPS = {
  lee: ['waiver-approvers'],
  morgan: ['waiver-approvers'],
  sam: ['waiver-requesters'],
  kim: ['waiver-requesters'],
  nobody: ['unrelated'],
};

const provider = new Provider(issuer, {
  jwks: { keys: [signingKey] },
  clients: [
    {
      client_id: 'waiver',
      client_secret: process.env.CLIENT_SECRET,
      redirect_uris: [`${waiver}/ui/oidc/callback`],
      post_logout_redirect_uris: [`${waiver}/ui/login`],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      backchannel_logout_uri: `${waiver}/ui/oidc/backchannel-logout`,
      backchannel_logout_session_required: true,
    },
    {
      client_id: 'ci-deployer',
      client_secret: 'ci-deployer-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    },
  ],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name', 'groups'],
    email: ['email'],
    acr: null,
    amr: null,
    auth_time: null,
  },
  acrValues: ['urn:waiver:pwd', 'urn:waiver:mfa'],
  conformIdTokenClaims: false,
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({
      sub: id,
      preferred_username: id,
      name: id.charAt(0).toUpperCase() + id.slice(1),
      email: `${id}@example.test`,
      groups: GROUPS[id] || [],
    }),
  }),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // Plain pages (the default ones load web fonts, which a closed network cannot fetch).
      logoutSource: async (ctx, form) => {
        ctx.body = `<!doctype html><html lang="en"><head><title>Sign out</title></head><body>
<h1>Sign out of the Test IdP?</h1>${form}
<button id="logout-yes" type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
</body></html>`;
      },
      postLogoutSuccessSource: async (ctx) => {
        ctx.body = '<!doctype html><html lang="en"><head><title>Signed out</title></head><body><h1 id="signed-out">Signed out</h1></body></html>';
      },
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => false,
      getResourceServerInfo: () => ({
        scope: 'api',
        audience: 'https://waiver.test',
        accessTokenFormat: 'jwt',
        accessTokenTTL: accessTtl,
      }),
    },
  },
  extraTokenClaims: async (ctx, token) =>
    token.kind === 'ClientCredentials' ? { groups: ['deployers'], preferred_username: token.clientId } : undefined,
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['waiver-test-only-cookie-key'] },
  // waiver listens on loopback in the tests: let back-channel logout reach it (the default
  // refuses special-use addresses, as a provider on a network should).
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  pkce: { required: () => true },
});
provider.proxy = false;

function readBody(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.on('data', (c) => { data += c; if (data.length > 65536) reject(new Error('too large')); });
    req.on('end', () => resolve(new URLSearchParams(data)));
    req.on('error', reject);
  });
}

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

provider.use(async (ctx, next) => {
  if (!ctx.path.startsWith('/interaction/')) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (ctx.method === 'GET') {
    ctx.type = 'html';
    ctx.body = `<!doctype html><html lang="en"><head><title>Test IdP sign-in</title></head><body>
<h1>Test IdP</h1><p>${escape(details.prompt.name)} for ${escape(details.params.client_id)}${details.params.acr_values ? ` (asks ${escape(details.params.acr_values)})` : ''}</p>
<form method="post" action="/interaction/${escape(details.uid)}">
<label>User <input id="login" name="login" autofocus></label>
<label>Password <input id="password" name="password" type="password"></label>
<label><input id="mfa" name="mfa" type="checkbox" value="yes"> I used my second factor</label>
<button id="submit" type="submit">Sign in</button></form></body></html>`;
    return undefined;
  }
  const form = await readBody(ctx.req);
  const accountId = form.get('login') || details.session?.accountId;
  const mfa = form.get('mfa') === 'yes';
  const grant = new provider.Grant({ accountId, clientId: details.params.client_id });
  grant.addOIDCScope(details.params.scope || 'openid');
  grant.addOIDCClaims(['preferred_username', 'name', 'groups', 'email', 'acr', 'amr', 'auth_time']);
  const grantId = await grant.save();
  const result = {
    login: { accountId, acr: mfa ? 'urn:waiver:mfa' : 'urn:waiver:pwd', amr: mfa ? ['pwd', 'otp'] : ['pwd'] },
    consent: { grantId },
  };
  await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
  return undefined;
});

provider.on('backchannel.error', (ctx, err, client) => console.error(`backchannel logout to ${client.clientId} failed: ${err} ${err.cause}`));
provider.on('backchannel.success', (ctx, client) => console.error(`backchannel logout to ${client.clientId} sent`));
provider.on('server_error', (ctx, err) => console.error(`server error: ${err.stack}`));

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
