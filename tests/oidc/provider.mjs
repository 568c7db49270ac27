// A real OpenID Connect provider (panva/oidc-provider, OpenID Certified) on loopback, for
// Tollgate's SSO tests. Accounts and their claims are read from ACCOUNTS_FILE at every
// sign-in, so a test can change a claim between two sign-ins. The development
// interactions (a login form taking any password, then a consent page) stand in for a
// real login page.
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const clients = JSON.parse(process.env.CLIENTS);

const provider = new Provider(issuer, {
  clients: clients.map((client) => ({
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
    ...client,
  })),
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'groups'],
  },
  // mozilla-django-oidc sends PKCE (Tollgate turns it on); the provider requires it too.
  pkce: { required: () => true },
  cookies: { keys: ['tollgate-test-oidc-cookie-key'] },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    const accounts = JSON.parse(readFileSync(process.env.ACCOUNTS_FILE, 'utf8'));
    const account = accounts[id];
    if (!account) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...account }; } };
  },
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
