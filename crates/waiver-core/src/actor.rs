//! Who acts, and with which roles (CONTRACT.md §5).

use std::fmt;

use crate::Principal;

/// A role a token (or a local operator) carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Requester,
    Approver,
    Responder,
    Admin,
    Auditor,
    Pep,
    Agent,
}

impl Role {
    pub const ALL: [Role; 7] =
        [Role::Requester, Role::Approver, Role::Responder, Role::Admin, Role::Auditor, Role::Pep, Role::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Requester => "requester",
            Role::Approver => "approver",
            Role::Responder => "responder",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::Pep => "pep",
            Role::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may do what, where a role alone decides it: the core checks these, and edges check
/// them again before reading a body, so a token without the role costs no parsing.
pub mod may {
    use super::Role;

    pub const FILE: &[Role] = &[Role::Requester, Role::Admin, Role::Agent];
    pub const BREAK_GLASS: &[Role] = &[Role::Responder];
    pub const REPLACE_BASELINE: &[Role] = &[Role::Admin];
    pub const READ_BASELINE: &[Role] = &[Role::Admin, Role::Auditor, Role::Approver];
    /// Roles a person holds: only these act as an owner or a requester. `pep` answers
    /// decisions and `auditor` reads; neither ever writes.
    pub const ACT_AS_PERSON: &[Role] = &[Role::Requester, Role::Approver, Role::Responder, Role::Admin];
    /// Everyone who may change an exception at all (an agent withdraws its own request).
    pub const ACT_AS_PERSON_OR_AGENT: &[Role] =
        &[Role::Requester, Role::Approver, Role::Responder, Role::Admin, Role::Agent];
}

/// A set of roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct RoleSet(u8);

impl RoleSet {
    pub fn of(roles: &[Role]) -> Self {
        Self(roles.iter().fold(0, |acc, r| acc | r.bit()))
    }

    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    pub fn any(self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.contains(*r))
    }

    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

/// How a person proved who they are at their identity provider: when, and how strongly
/// (OpenID Connect `auth_time`, `acr`, `amr`). API tokens and the local CLI carry none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authentication {
    pub at: jiff::Timestamp,
    pub acr: Option<String>,
    pub amr: Vec<String>,
}

/// The one who does an operation: a principal and the roles it holds for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub principal: Principal,
    pub roles: RoleSet,
    /// Who issued the token this actor presents, when that is someone else: they saw the
    /// secret, so separation of duties treats them as this actor too.
    pub issuer: Option<Principal>,
    /// The sign-in behind this actor, when it came through an identity provider: what the
    /// rules' `[step_up]` asks of approve, revoke and break-glass.
    pub authentication: Option<Authentication>,
}

impl Actor {
    pub fn new(principal: Principal, roles: &[Role]) -> Self {
        Self { principal, roles: RoleSet::of(roles), issuer: None, authentication: None }
    }

    /// This actor, signed in as `authentication` says.
    pub fn authenticated(mut self, authentication: Authentication) -> Self {
        self.authentication = Some(authentication);
        self
    }

    /// The actor waiver itself uses for what time does: expiry, timeouts, triggers.
    pub fn system() -> Self {
        Self::new(Principal::system(), &[Role::Admin])
    }

    /// This actor, presenting a token `issuer` issued (ignored when it is the actor itself or
    /// waiver's own bootstrap).
    pub fn issued_by(mut self, issuer: Principal) -> Self {
        if issuer != self.principal && issuer != Principal::system() {
            self.issuer = Some(issuer);
        }
        self
    }

    pub fn is(&self, principal: &Principal) -> bool {
        &self.principal == principal
    }

    /// Whether `principal` stands behind this actor: the principal itself, or the issuer
    /// of its token. Separation of duties asks this, never [`Actor::is`].
    pub fn involves(&self, principal: &Principal) -> bool {
        self.is(principal) || self.issuer.as_ref() == Some(principal)
    }

    /// Whether this actor is `principal` acting as a person: what owner powers need. A
    /// `pep` or `auditor` token named after the owner is still not the owner.
    pub fn acts_as(&self, principal: &Principal) -> bool {
        self.is(principal) && self.roles.any(may::ACT_AS_PERSON)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_actor_is_valid() {
        assert_eq!(Actor::system().principal.as_str(), "waiver");
        assert_eq!(Principal::parse("actor", "waiver").unwrap(), Principal::system());
    }

    #[test]
    fn role_sets() {
        let set = RoleSet::of(&[Role::Approver, Role::Auditor]);
        assert!(set.contains(Role::Approver) && !set.contains(Role::Admin));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![Role::Approver, Role::Auditor]);
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
    }
}
