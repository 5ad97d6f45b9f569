//! OpenID Connect: people sign in to the web UI through the organisation's identity provider
//! (authorization code with PKCE; state, nonce and the browser binding checked; the ID token
//! validated against the provider's JWKS), and people and workloads call the REST API with
//! JWTs from configured issuers (issuer, audience, expiry and clock skew checked).
//!
//! Keys are fetched from each issuer's `jwks_uri` and kept in memory; a token signed with a
//! key not held makes one fetch (at most once every 10 s per issuer, so forged `kid`s cannot
//! make us hammer the provider): that is key rotation. Claims map to waiver roles by
//! configuration only: a token with no mapped group gets no role and is refused.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use waiver_core::{Authentication, Principal, Role};

/// The `[[issuer]]` and `[sign_in]` parts of the server's configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Identity providers whose tokens waiver accepts.
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<IssuerConfig>,
    /// Sign-in to the web UI through one of them.
    pub sign_in: Option<SignInConfig>,
}

/// One identity provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Its issuer identifier, exactly as its tokens carry it in `iss` (`https://login.example/`).
    pub url: String,
    /// The `aud` values accepted on API bearer tokens; none: this issuer's JWTs are not
    /// accepted on the API (its ID tokens still sign people in to the UI).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The claim naming the principal (`preferred_username`, `email`, `sub`).
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// The claim listing the person's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The claim naming the person's team (`department`), kept in the directory; none: teams
    /// are not taken from this issuer.
    #[serde(default)]
    pub team_claim: Option<String>,
    /// Group → waiver roles. A token whose groups map to no role is refused.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
}

fn default_name_claim() -> String {
    "preferred_username".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_leeway() -> u64 {
    60
}

/// Sign-in to the web UI.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInConfig {
    /// The `url` of one `[[issuer]]`.
    pub issuer: String,
    pub client_id: String,
    /// The environment variable holding the client secret (never the file).
    #[serde(default = "default_secret_env")]
    pub client_secret_env: String,
    /// Scopes asked for besides `openid`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The name on the sign-in button.
    #[serde(default = "default_provider_name")]
    pub display_name: String,
    /// Whether the API-token form stays on the sign-in page (off: people sign in only
    /// through the provider).
    #[serde(default)]
    pub token_sign_in: bool,
}

fn default_secret_env() -> String {
    "WAIVER_OIDC_CLIENT_SECRET".into()
}
fn default_scopes() -> Vec<String> {
    vec!["profile".into(), "email".into()]
}
fn default_provider_name() -> String {
    "your identity provider".into()
}

/// Why a configuration, a token or a sign-in was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("invalid authentication configuration: {0}")]
    Config(String),
    /// The token is not one this server accepts (the words say why; no secret in them).
    #[error("{0}")]
    Rejected(String),
    /// The provider could not be reached or answered nonsense.
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
}

/// Who a validated token names, and how they signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub issuer: String,
    pub subject: String,
    pub principal: Principal,
    /// The groups the token names (its groups claim).
    pub groups: Vec<String>,
    /// The roles those groups map to (the caller adds the directory's groups, then refuses
    /// a principal left with none).
    pub roles: Vec<Role>,
    pub authentication: Authentication,
    /// The provider's session (`sid`), for its logout.
    pub sid: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    /// The team claim's value, when the issuer names one.
    pub team: Option<String>,
    pub expires_at: jiff::Timestamp,
}

/// What an issuer's discovery document says (the parts waiver uses).
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

impl Issuer {
    fn roles_of(&self, groups: &[String]) -> Vec<Role> {
        let mut roles: Vec<Role> = groups.iter().filter_map(|g| self.roles.get(g)).flatten().copied().collect();
        roles.sort();
        roles.dedup();
        roles
    }
}

struct Issuer {
    config: IssuerConfig,
    roles: BTreeMap<String, Vec<Role>>,
    discovery: ArcSwapOption<Discovery>,
    keys: ArcSwapOption<JwkSet>,
    /// When keys were last fetched: a fetch for an unknown `kid` waits a minute after it.
    fetched: Mutex<Option<Instant>>,
}

/// A sign-in started and not yet finished, by its `state`.
#[derive(Debug, Clone)]
pub struct Pending {
    pub nonce: String,
    pub verifier: String,
    pub next: String,
    started: Instant,
}

/// How long a started sign-in may take at the provider.
const PENDING_FOR: Duration = Duration::from_secs(600);
/// Most sign-ins pending at once.
const MAX_PENDING: usize = 10_000;
/// Least time between two key fetches for one issuer.
const REFETCH_AFTER: Duration = Duration::from_secs(10);
/// Largest document read from a provider.
const MAX_DOCUMENT: u64 = 1 << 20;

/// The accepted issuers and UI sign-in.
pub struct Oidc {
    issuers: Vec<Arc<Issuer>>,
    sign_in: Option<(SignInConfig, String)>,
    pending: Mutex<HashMap<String, Pending>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc").field("issuers", &self.issuers.len()).finish_non_exhaustive()
    }
}

/// Whether `url` may name an issuer: `https`, or `http` on loopback only (tests, a local
/// provider) — tokens and keys are never fetched in the clear across a network.
fn usable_url(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

impl Oidc {
    /// Checks the configuration; `client_secret` is the sign-in client's secret (read from
    /// the environment by the caller).
    pub fn new(config: AuthConfig, client_secret: Option<String>) -> Result<Self, OidcError> {
        let mut issuers = Vec::new();
        for issuer in config.issuers {
            if !usable_url(&issuer.url) {
                return Err(OidcError::Config(format!(
                    "`issuer.url`: `{}` is not https (plain http is allowed on loopback only)",
                    issuer.url
                )));
            }
            if issuers.iter().any(|i: &Arc<Issuer>| i.config.url == issuer.url) {
                return Err(OidcError::Config(format!("`issuer.url`: `{}` is named twice", issuer.url)));
            }
            let mut roles = BTreeMap::new();
            for (group, names) in &issuer.groups {
                let parsed = names
                    .iter()
                    .map(|n| {
                        Role::parse(n).ok_or_else(|| {
                            OidcError::Config(format!("`issuer.groups.{group}`: `{n}` is not a waiver role"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                roles.insert(group.clone(), parsed);
            }
            issuers.push(Arc::new(Issuer {
                config: issuer,
                roles,
                discovery: ArcSwapOption::empty(),
                keys: ArcSwapOption::empty(),
                fetched: Mutex::new(None),
            }));
        }
        let sign_in = match config.sign_in {
            None => None,
            Some(s) => {
                if !issuers.iter().any(|i| i.config.url == s.issuer) {
                    return Err(OidcError::Config(format!(
                        "`sign_in.issuer`: `{}` is not the url of an `[[issuer]]`",
                        s.issuer
                    )));
                }
                let secret = client_secret.filter(|s| !s.is_empty()).ok_or_else(|| {
                    OidcError::Config(format!("`sign_in`: the client secret is not in `${}`", s.client_secret_env))
                })?;
                Some((s, secret))
            }
        };
        Ok(Self { issuers, sign_in, pending: Mutex::default() })
    }

    /// Whether people sign in to the UI through a provider.
    pub fn sign_in(&self) -> Option<&SignInConfig> {
        self.sign_in.as_ref().map(|(s, _)| s)
    }

    /// `verified` with the roles the directory's groups (provisioned by SCIM) add; refused
    /// when the principal is left with no role.
    pub fn with_directory_groups(&self, mut verified: Verified, groups: &[String]) -> Result<Verified, OidcError> {
        if let Some(issuer) = self.issuer(&verified.issuer) {
            verified.roles.extend(issuer.roles_of(groups));
            verified.roles.sort();
            verified.roles.dedup();
        }
        if verified.roles.is_empty() {
            let claim = self.issuer(&verified.issuer).map_or("groups", |i| i.config.groups_claim.as_str());
            return Err(OidcError::Rejected(format!(
                "`{}` is in no group that maps to a waiver role (claim `{claim}`, or a provisioned group)",
                verified.principal
            )));
        }
        Ok(verified)
    }

    /// Whether any issuer's JWTs are accepted on the API.
    pub fn accepts_bearer_jwts(&self) -> bool {
        self.issuers.iter().any(|i| !i.config.audiences.is_empty())
    }

    fn issuer(&self, url: &str) -> Option<&Arc<Issuer>> {
        self.issuers.iter().find(|i| i.config.url == url)
    }

    fn sign_in_issuer(&self) -> Result<(&SignInConfig, &str, &Arc<Issuer>), OidcError> {
        let (config, secret) = self
            .sign_in
            .as_ref()
            .ok_or_else(|| OidcError::Config("sign-in through a provider is not set up".into()))?;
        let issuer = self.issuer(&config.issuer).ok_or_else(|| OidcError::Config("no such issuer".into()))?;
        Ok((config, secret, issuer))
    }

    /// Starts a sign-in: the provider's authorization URL and the `state` naming it (the
    /// caller binds it to the browser with a cookie). `step_up` asks the provider to
    /// authenticate again now, as strongly as `acr_values` names.
    pub async fn start(
        &self,
        redirect_uri: &str,
        next: &str,
        step_up: Option<(&[String], bool)>,
    ) -> Result<(String, String), OidcError> {
        let (config, _, issuer) = self.sign_in_issuer()?;
        let discovery = discover(issuer).await?;
        let (state, nonce, verifier) = (random(), random(), random());
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let mut scope = vec!["openid".to_owned()];
        scope.extend(config.scopes.iter().filter(|s| *s != "openid").cloned());
        let scope = scope.join(" ");
        let mut query: Vec<(&str, &str)> = vec![
            ("response_type", "code"),
            ("client_id", &config.client_id),
            ("redirect_uri", redirect_uri),
            ("scope", &scope),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ];
        let acr_values;
        if let Some((acr, _)) = step_up {
            query.push(("prompt", "login"));
            query.push(("max_age", "0"));
            if !acr.is_empty() {
                acr_values = acr.join(" ");
                query.push(("acr_values", &acr_values));
            }
        }
        let query = serde_urlencoded::to_string(&query).map_err(|e| OidcError::Config(e.to_string()))?;
        let separator = if discovery.authorization_endpoint.contains('?') { '&' } else { '?' };
        let url = format!("{}{separator}{query}", discovery.authorization_endpoint);
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        pending.retain(|_, p| now.duration_since(p.started) < PENDING_FOR);
        if pending.len() >= MAX_PENDING {
            return Err(OidcError::Unavailable("too many sign-ins are under way; try again shortly".into()));
        }
        pending.insert(state.clone(), Pending { nonce, verifier, next: next.to_owned(), started: now });
        Ok((url, state))
    }

    /// Finishes a sign-in: the `state` must be one this server started (and the browser's),
    /// the code is exchanged with the PKCE verifier, and the ID token must carry the nonce.
    /// Returns who signed in, the ID token (for the provider's logout) and where to go next.
    pub async fn finish(
        &self,
        redirect_uri: &str,
        state: &str,
        code: &str,
    ) -> Result<(Verified, String, String), OidcError> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(state)
            .filter(|p| p.started.elapsed() < PENDING_FOR)
            .ok_or_else(|| {
                OidcError::Rejected("this sign-in was not started here or took too long; start again".into())
            })?;
        let (config, secret, issuer) = self.sign_in_issuer()?;
        let discovery = discover(issuer).await?;
        let form = vec![
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".to_owned(), code.to_owned()),
            ("redirect_uri".to_owned(), redirect_uri.to_owned()),
            ("code_verifier".to_owned(), pending.verifier.clone()),
        ];
        let basic = format!("{}:{}", form_encode(&config.client_id), form_encode(secret));
        let authorization = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(basic));
        let answer = post_form(&discovery.token_endpoint, form, authorization).await?;
        let id_token = answer
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| OidcError::Rejected("the provider answered without an ID token".into()))?
            .to_owned();
        let verified =
            self.verify(issuer, &id_token, std::slice::from_ref(&config.client_id), Some(&pending.nonce)).await?;
        Ok((verified, id_token, pending.next))
    }

    /// Validates a JWT presented on the API: from a configured issuer, for one of its
    /// audiences, current, and naming someone with a role.
    pub async fn bearer(&self, token: &str) -> Result<Verified, OidcError> {
        let iss = unverified_issuer(token)?;
        let issuer = self
            .issuer(&iss)
            .filter(|i| !i.config.audiences.is_empty())
            .ok_or_else(|| OidcError::Rejected("the token's issuer is not one this server accepts".into()))?;
        let audiences = issuer.config.audiences.clone();
        self.verify(issuer, token, &audiences, None).await
    }

    /// Validates a back-channel logout token from the sign-in provider: the provider's
    /// session (`sid`) or subject that signed out.
    pub async fn logout_token(&self, token: &str) -> Result<(String, Option<String>, Option<String>), OidcError> {
        let (config, _, issuer) = self.sign_in_issuer()?;
        let claims = self.claims(issuer, token, std::slice::from_ref(&config.client_id), false).await?;
        let events = claims.get("events").and_then(Value::as_object);
        if !events.is_some_and(|e| e.contains_key("http://schemas.openid.net/event/backchannel-logout")) {
            return Err(OidcError::Rejected("not a logout token (no back-channel logout event)".into()));
        }
        if claims.contains_key("nonce") {
            return Err(OidcError::Rejected("a logout token carries no nonce".into()));
        }
        let sid = claims.get("sid").and_then(Value::as_str).map(str::to_owned);
        let sub = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
        if sid.is_none() && sub.is_none() {
            return Err(OidcError::Rejected("a logout token names a `sid` or a `sub`".into()));
        }
        Ok((issuer.config.url.clone(), sid, sub))
    }

    /// Where the provider ends its own session, for a signed-in person's sign-out.
    pub async fn end_session_url(&self, id_token: &str, after: &str) -> Option<String> {
        let (config, _, issuer) = self.sign_in_issuer().ok()?;
        let endpoint = discover(issuer).await.ok()?.end_session_endpoint.clone()?;
        let query = serde_urlencoded::to_string([
            ("id_token_hint", id_token),
            ("post_logout_redirect_uri", after),
            ("client_id", &config.client_id),
        ])
        .ok()?;
        let separator = if endpoint.contains('?') { '&' } else { '?' };
        Some(format!("{endpoint}{separator}{query}"))
    }

    async fn verify(
        &self,
        issuer: &Issuer,
        token: &str,
        audiences: &[String],
        nonce: Option<&str>,
    ) -> Result<Verified, OidcError> {
        let claims = self.claims(issuer, token, audiences, true).await?;
        if let Some(expected) = nonce {
            let sent = claims.get("nonce").and_then(Value::as_str).unwrap_or_default();
            if !crate::ui::session::same(sent, expected) {
                return Err(OidcError::Rejected("the ID token's nonce is not this sign-in's".into()));
            }
            // Several audiences: the token must say it was issued to us.
            if claims.get("aud").and_then(Value::as_array).is_some_and(|a| a.len() > 1)
                && claims.get("azp").and_then(Value::as_str) != audiences.first().map(String::as_str)
            {
                return Err(OidcError::Rejected("the ID token was issued to another client (`azp`)".into()));
            }
        }
        verified_from(issuer, &claims)
    }

    /// The claims of a JWT signed by one of `issuer`'s keys, checked for issuer, audience
    /// and (with `current`) expiry and not-before, within the configured skew.
    async fn claims(
        &self,
        issuer: &Issuer,
        token: &str,
        audiences: &[String],
        current: bool,
    ) -> Result<Map<String, Value>, OidcError> {
        if token.len() > 16 * 1024 {
            return Err(OidcError::Rejected("the token is longer than 16 KiB".into()));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| OidcError::Rejected(format!("the token is not a JWT: {e}")))?;
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(OidcError::Rejected(format!(
                "the token is signed with `{:?}`; only the provider's public keys are accepted",
                header.alg
            )));
        }
        let key = key_for(issuer, header.kid.as_deref(), header.alg).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[issuer.config.url.as_str()]);
        validation.set_audience(audiences);
        validation.leeway = issuer.config.leeway_seconds;
        validation.validate_exp = current;
        validation.validate_nbf = current;
        let required: &[&str] = if current { &["exp", "iss", "aud", "iat"] } else { &["iss", "aud", "iat"] };
        validation.set_required_spec_claims(required);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| OidcError::Rejected(format!("the token is refused: {e}")))?;
        Ok(data.claims)
    }
}

/// The principal, roles and sign-in a token's claims name.
fn verified_from(issuer: &Issuer, claims: &Map<String, Value>) -> Result<Verified, OidcError> {
    let config = &issuer.config;
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| OidcError::Rejected("the token has no `sub`".into()))?
        .to_owned();
    let name = claims.get(&config.name_claim).and_then(Value::as_str).ok_or_else(|| {
        OidcError::Rejected(format!("the token has no `{}` claim to name the principal", config.name_claim))
    })?;
    let principal = Principal::parse(&config.name_claim, name)
        .map_err(|e| OidcError::Rejected(format!("`{}`: {}", config.name_claim, e.message)))?;
    if principal == Principal::system() {
        return Err(OidcError::Rejected("a token may not name waiver itself".into()));
    }
    let groups: Vec<&str> = match claims.get(&config.groups_claim) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(one)) => one.split(' ').collect(),
        _ => Vec::new(),
    };
    let groups: Vec<String> = groups.into_iter().take(1000).map(str::to_owned).collect();
    let roles = issuer.roles_of(&groups);
    let seconds =
        |key: &str| claims.get(key).and_then(Value::as_i64).and_then(|s| jiff::Timestamp::from_second(s).ok());
    let expires_at = seconds("exp").unwrap_or(jiff::Timestamp::MAX);
    // Without `auth_time` the sign-in's age is unknown: it meets no `max_age`.
    let at = seconds("auth_time").unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let amr = claims
        .get("amr")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    let acr = claims.get("acr").and_then(Value::as_str).map(str::to_owned);
    let text = |key: &str| claims.get(key).and_then(Value::as_str).map(str::to_owned);
    Ok(Verified {
        issuer: config.url.clone(),
        subject,
        principal,
        groups,
        roles,
        authentication: Authentication { at, acr, amr },
        sid: text("sid"),
        email: text("email"),
        name: text("name"),
        team: config.team_claim.as_deref().and_then(text),
        expires_at,
    })
}

/// The `iss` of a JWT before its signature is checked: only to pick whose keys check it.
fn unverified_issuer(token: &str) -> Result<String, OidcError> {
    let payload = token.split('.').nth(1).ok_or_else(|| OidcError::Rejected("the token is not a JWT".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| OidcError::Rejected("the token is not a JWT".into()))?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| OidcError::Rejected("the token's claims are not JSON".into()))?;
    claims
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| OidcError::Rejected("the token has no `iss`".into()))
}

/// The issuer's discovery document, fetched once and kept.
async fn discover(issuer: &Issuer) -> Result<Arc<Discovery>, OidcError> {
    if let Some(held) = issuer.discovery.load_full() {
        return Ok(held);
    }
    let url = format!("{}/.well-known/openid-configuration", issuer.config.url.trim_end_matches('/'));
    let document = get_json(&url).await?;
    let discovery: Discovery = serde_json::from_value(document)
        .map_err(|e| OidcError::Unavailable(format!("the discovery document does not parse: {e}")))?;
    if discovery.issuer != issuer.config.url {
        return Err(OidcError::Unavailable(format!(
            "the discovery document names issuer `{}`, not `{}`",
            discovery.issuer, issuer.config.url
        )));
    }
    for endpoint in [&discovery.authorization_endpoint, &discovery.token_endpoint, &discovery.jwks_uri] {
        if !usable_url(endpoint) {
            return Err(OidcError::Unavailable(format!("the endpoint `{endpoint}` is not https")));
        }
    }
    let discovery = Arc::new(discovery);
    issuer.discovery.store(Some(discovery.clone()));
    Ok(discovery)
}

/// The key that checks a token signed with `kid` and `alg`, fetching the issuer's keys again
/// when none held fits (rotation), at most once every 10 s.
async fn key_for(issuer: &Issuer, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, OidcError> {
    let find = |set: &JwkSet| -> Option<DecodingKey> {
        let fits = |k: &&jsonwebtoken::jwk::Jwk| {
            kid.is_none_or(|kid| k.common.key_id.as_deref() == Some(kid))
                && k.common.key_algorithm.is_none_or(|a| format!("{a:?}") == format!("{alg:?}"))
        };
        let mut candidates = set.keys.iter().filter(fits);
        let key = candidates.next()?;
        // No `kid` and several keys: ambiguous, so none.
        if kid.is_none() && candidates.next().is_some() {
            return None;
        }
        DecodingKey::from_jwk(key).ok()
    };
    if let Some(key) = issuer.keys.load().as_deref().and_then(find) {
        return Ok(key);
    }
    let due = {
        let mut fetched = issuer.fetched.lock().unwrap_or_else(PoisonError::into_inner);
        let due = fetched.is_none_or(|at| at.elapsed() >= REFETCH_AFTER);
        if due {
            *fetched = Some(Instant::now());
        }
        due
    };
    if due {
        let discovery = discover(issuer).await?;
        let set: JwkSet = serde_json::from_value(get_json(&discovery.jwks_uri).await?)
            .map_err(|e| OidcError::Unavailable(format!("the provider's keys do not parse: {e}")))?;
        issuer.keys.store(Some(Arc::new(set)));
        if let Some(key) = issuer.keys.load().as_deref().and_then(find) {
            return Ok(key);
        }
    }
    Err(OidcError::Rejected("the token is signed with a key the issuer does not publish".into()))
}

fn random() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn form_encode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)]).map(|v| v.trim_start_matches('=').to_owned()).unwrap_or_default()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .new_agent()
}

fn read_json(mut response: ureq::http::Response<ureq::Body>, what: &str) -> Result<Value, OidcError> {
    let status = response.status();
    let text = response
        .body_mut()
        .with_config()
        .limit(MAX_DOCUMENT)
        .read_to_string()
        .map_err(|e| OidcError::Unavailable(format!("{what}: {e}")))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|_| OidcError::Unavailable(format!("{what} answered {status}, not JSON")))?;
    if !status.is_success() {
        let error = value.get("error").and_then(Value::as_str).unwrap_or("error");
        let description = value.get("error_description").and_then(Value::as_str).unwrap_or_default();
        return Err(OidcError::Rejected(format!("{what} refused: {error} {description}").trim().to_owned()));
    }
    Ok(value)
}

async fn get_json(url: &str) -> Result<Value, OidcError> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let response = agent().get(&url).call().map_err(|e| OidcError::Unavailable(format!("{url}: {e}")))?;
        read_json(response, &url)
    })
    .await
    .map_err(|_| OidcError::Unavailable("the fetch failed".into()))?
}

async fn post_form(url: &str, form: Vec<(String, String)>, authorization: String) -> Result<Value, OidcError> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let response = agent()
            .post(&url)
            .header("authorization", &authorization)
            .header("accept", "application/json")
            .send_form(form.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| OidcError::Unavailable(format!("the token endpoint: {e}")))?;
        read_json(response, "the token endpoint")
    })
    .await
    .map_err(|_| OidcError::Unavailable("the token exchange failed".into()))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(text: &str) -> AuthConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn configuration_is_checked() {
        let ok = "[[issuer]]\nurl = \"https://idp.example\"\naudiences = [\"waiver\"]\n[issuer.groups]\nops = [\"approver\"]\n";
        assert!(Oidc::new(config(ok), None).unwrap().accepts_bearer_jwts());
        let plain = "[[issuer]]\nurl = \"http://idp.example\"\n";
        assert!(Oidc::new(config(plain), None).unwrap_err().to_string().contains("not https"));
        assert!(Oidc::new(config("[[issuer]]\nurl = \"http://127.0.0.1:9000\"\n"), None).is_ok());
        let role = "[[issuer]]\nurl = \"https://idp.example\"\n[issuer.groups]\nops = [\"root\"]\n";
        assert!(Oidc::new(config(role), None).unwrap_err().to_string().contains("`root` is not a waiver role"));
        let orphan = "[sign_in]\nissuer = \"https://other\"\nclient_id = \"w\"\n";
        assert!(Oidc::new(config(orphan), Some("s".into())).unwrap_err().to_string().contains("not the url"));
        let secretless = format!("{ok}[sign_in]\nissuer = \"https://idp.example\"\nclient_id = \"w\"\n");
        assert!(Oidc::new(config(&secretless), None).unwrap_err().to_string().contains("WAIVER_OIDC_CLIENT_SECRET"));
        assert!(toml::from_str::<AuthConfig>("[[issuer]]\nurl = \"https://a\"\nsurprise = 1\n").is_err());
    }

    #[test]
    fn claims_map_to_a_principal_with_roles_or_are_refused() {
        let oidc = Oidc::new(
            config(
                "[[issuer]]\nurl = \"https://idp.example\"\n[issuer.groups]\nops = [\"approver\", \"requester\"]\nadmins = [\"admin\"]\n",
            ),
            None,
        )
        .unwrap();
        let issuer = &oidc.issuers[0];
        let claims = |v: Value| v.as_object().unwrap().clone();
        let lee = verified_from(
            issuer,
            &claims(serde_json::json!({"sub": "1", "preferred_username": "lee", "groups": ["ops", "x"], "auth_time": 1_700_000_000, "acr": "mfa", "amr": ["pwd", "otp"]})),
        )
        .unwrap();
        assert_eq!(lee.principal.as_str(), "lee");
        assert_eq!(lee.roles, vec![Role::Requester, Role::Approver]);
        assert!(oidc.with_directory_groups(lee.clone(), &[]).is_ok());
        assert_eq!(lee.authentication.acr.as_deref(), Some("mfa"));
        assert_eq!(lee.authentication.at.as_second(), 1_700_000_000);
        let nobody = verified_from(
            issuer,
            &claims(serde_json::json!({"sub": "2", "preferred_username": "kim", "groups": ["x"]})),
        )
        .unwrap();
        assert!(nobody.roles.is_empty());
        let refused = oidc.with_directory_groups(nobody.clone(), &["x".into()]);
        assert!(refused.unwrap_err().to_string().contains("no group that maps"));
        // A group the directory holds (SCIM) maps as a claimed one does.
        assert_eq!(oidc.with_directory_groups(nobody, &["admins".into()]).unwrap().roles, vec![Role::Admin]);
        let unnamed = verified_from(issuer, &claims(serde_json::json!({"sub": "3", "groups": ["ops"]})));
        assert!(unnamed.unwrap_err().to_string().contains("preferred_username"));
        let system = verified_from(
            issuer,
            &claims(serde_json::json!({"sub": "4", "preferred_username": "waiver", "groups": ["admins"]})),
        );
        assert!(system.is_err());
    }

    #[test]
    fn only_loopback_may_be_plain_http() {
        assert!(usable_url("https://idp.example/realms/x"));
        assert!(usable_url("http://127.0.0.1:9000"));
        assert!(usable_url("http://localhost:9000/x"));
        assert!(!usable_url("http://idp.example"));
        assert!(!usable_url("http://127.0.0.1.evil.example"));
        assert!(!usable_url("ftp://idp.example"));
    }

    #[test]
    fn the_issuer_is_read_only_to_pick_keys() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"iss":"https://idp.example","sub":"x"}"#);
        assert_eq!(unverified_issuer(&format!("e30.{payload}.sig")).unwrap(), "https://idp.example");
        assert!(unverified_issuer("not-a-jwt").is_err());
        assert!(unverified_issuer("a.!!!.c").is_err());
    }
}
