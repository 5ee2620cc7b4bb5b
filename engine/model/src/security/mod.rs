//! Who may do what: principals, access-control rules, tokens, tenants and
//! quotas, as replicated data.
//!
//! A connection authenticates as a [`Principal`] (its TLS client
//! certificate's name, a token's owner, or a node). Every request a node
//! serves is one or more [`Access`]es — an [`Operation`] on a
//! [`Resource`] — which [`Security::check`] allows or refuses:
//!
//! - a rule names a principal (or every principal), a resource pattern
//!   (an exact name or a prefix), an operation (or every operation) and an
//!   [`Effect`]; **deny wins** over allow, and no matching rule denies;
//! - a principal that belongs to a [`Tenant`] reaches only names inside its
//!   tenant's prefix: anything else is refused as if it did not exist;
//! - superusers (from a node's configuration, never replicated) pass every
//!   check; node principals pass none of the client checks (nodes speak
//!   Raft, not the client protocol).
//!
//! The rules, tokens, tenants and quotas change only through
//! [`SecurityOp`]s wrapped in an `Op::Admin` entry, so each change is a
//! chained log entry naming who made it and when (the admin trail).

mod acl;
pub mod fuzzing;
mod token;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use acl::{Acls, NamePattern, ResourcePattern, Rule, RuleError};
pub use token::{TOKEN_PREFIX, Token, TokenError, TokenRecord};

/// An authenticated identity: a user or service (by its certificate's
/// name or its token's owner) or a node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Principal {
    /// A client: a certificate's common name, or the owner named when its
    /// token was created.
    User(Arc<str>),
    /// A node (its `transport::NodeId`), authenticated by its node
    /// certificate (or, without TLS, by the cluster secret).
    Node(u64),
    /// Nobody: a connection to a node started with `--insecure` and no
    /// cluster secret. Only a node that names it a superuser lets it in.
    Anonymous,
}

impl Principal {
    /// A user principal.
    pub fn user(name: impl AsRef<str>) -> Principal {
        Principal::User(Arc::from(name.as_ref()))
    }

    /// The user's name, if this is a user.
    pub fn user_name(&self) -> Option<&str> {
        match self {
            Principal::User(name) => Some(name),
            _ => None,
        }
    }

    /// Parses what [`Principal`]'s `Display` prints: `User:NAME`,
    /// `Node:ID` or `Anonymous`; a bare name is a user.
    pub fn parse(text: &str) -> Result<Principal, RuleError> {
        if text == "Anonymous" {
            return Ok(Principal::Anonymous);
        }
        if let Some(id) = text.strip_prefix("Node:") {
            return id
                .parse()
                .map(Principal::Node)
                .map_err(|_| RuleError::Principal(text.to_owned()));
        }
        let name = text.strip_prefix("User:").unwrap_or(text);
        if !valid_principal_name(name) {
            return Err(RuleError::Principal(text.to_owned()));
        }
        Ok(Principal::user(name))
    }
}

/// 1 to [`PRINCIPAL_NAME_MAX`] printable ASCII characters, no spaces, no
/// colons (they separate the kind in `User:NAME`).
pub fn valid_principal_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= PRINCIPAL_NAME_MAX
        && name
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && byte != b':')
}

pub use crate::constants::PRINCIPAL_NAME_MAX;

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::User(name) => write!(f, "User:{name}"),
            Principal::Node(id) => write!(f, "Node:{id}"),
            Principal::Anonymous => f.write_str("Anonymous"),
        }
    }
}

/// What a request does, for access control. Kafka's operations, cut to
/// Sluice's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Operation {
    /// Append events to a topic (publish, a transaction's outputs).
    Publish,
    /// Read a topic; join, commit or read a consumer group.
    Consume,
    /// Create a topic.
    Create,
    /// Delete a topic or a group.
    Delete,
    /// Change a topic's configuration.
    Alter,
    /// Cluster administration: membership, ACLs, tokens, tenants, quotas.
    Admin,
    /// Export a subject's events and the admin trail.
    AuditExport,
    /// Erase a subject.
    Erase,
    /// Replay dead letters into their topic.
    Replay,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 9] = [
        Operation::Publish,
        Operation::Consume,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::Admin,
        Operation::AuditExport,
        Operation::Erase,
        Operation::Replay,
    ];

    /// The operation's name on the command line and in refusals.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Publish => "publish",
            Operation::Consume => "consume",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Alter => "alter",
            Operation::Admin => "admin",
            Operation::AuditExport => "audit-export",
            Operation::Erase => "erase",
            Operation::Replay => "replay",
        }
    }

    /// The operation named `name`.
    pub fn parse(name: &str) -> Result<Operation, RuleError> {
        Operation::ALL
            .into_iter()
            .find(|operation| operation.name() == name)
            .ok_or_else(|| RuleError::Operation(name.to_owned()))
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One concrete thing a request touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource<'a> {
    /// A topic, by name.
    Topic(&'a str),
    /// A consumer group, by name.
    Group(&'a str),
    /// The cluster: membership, security settings.
    Cluster,
    /// The audit trail: exports, erasures, verification.
    Audit,
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Topic(name) => write!(f, "topic {name:?}"),
            Resource::Group(name) => write!(f, "group {name:?}"),
            Resource::Cluster => f.write_str("the cluster"),
            Resource::Audit => f.write_str("the audit trail"),
        }
    }
}

/// An operation on a resource: what one check decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Access<'a> {
    /// What is done.
    pub operation: Operation,
    /// To what.
    pub resource: Resource<'a>,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Effect {
    /// Lets the access through unless a deny rule also matches.
    Allow,
    /// Refuses the access, whatever else allows it.
    Deny,
}

/// A refused access: names the principal, the operation and the resource,
/// so the refusal can be read without the rules at hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{principal} may not {operation} on {resource}: {reason}")]
pub struct Denied {
    /// Who asked.
    pub principal: String,
    /// The operation refused.
    pub operation: String,
    /// The resource, as `Resource`'s `Display` prints it.
    pub resource: String,
    /// Which rule (or the lack of one) refused it.
    pub reason: String,
}

/// A tenant: a namespace of topics and groups, and the principals that
/// live in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// The tenant's name.
    pub name: String,
    /// Every topic and group name of the tenant starts with this (for
    /// example `acme.`); no two tenants' prefixes overlap.
    pub prefix: String,
}

/// A principal's rate limits, enforced by the leader with token buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Bytes of requests per second (bursts up to one second's worth);
    /// `None`: no limit.
    pub bytes_per_second: Option<u64>,
    /// Requests per second (bursts up to one second's worth); `None`: no
    /// limit.
    pub requests_per_second: Option<u64>,
}

/// A change to the security settings. Always carried by an `Op::Admin`
/// entry, which records who made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityOp {
    /// Adds a rule (adding an existing rule changes nothing).
    AddRule(Rule),
    /// Removes a rule (removing an absent rule changes nothing).
    RemoveRule(Rule),
    /// Records a token: only its salt and salted hash are stored.
    CreateToken(TokenRecord),
    /// Revokes a token: connections presenting it are refused from then
    /// on.
    RevokeToken {
        /// The token's id (the part before its secret).
        id: String,
    },
    /// Creates or changes a tenant.
    SetTenant(Tenant),
    /// Removes a tenant (its principals keep their membership records but
    /// then reach nothing until assigned again).
    RemoveTenant {
        /// The tenant's name.
        name: String,
    },
    /// Puts a user principal into a tenant, or (`None`) out of any.
    AssignTenant {
        /// The principal's name.
        principal: String,
        /// The tenant, which must exist.
        tenant: Option<String>,
    },
    /// Sets (or, with `None`, removes) a user principal's quota.
    SetQuota {
        /// The principal's name.
        principal: String,
        /// The limits.
        quota: Option<Quota>,
    },
}

/// Why the state machine refused a [`SecurityOp`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum SecurityError {
    /// A rule, token or name is malformed.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// A token with this id exists already.
    #[error("a token with id {0:?} exists already")]
    TokenExists(String),
    /// No token has this id.
    #[error("no token has id {0:?}")]
    UnknownToken(String),
    /// No tenant has this name.
    #[error("no tenant is named {0:?}")]
    UnknownTenant(String),
    /// Two tenants' prefixes would overlap.
    #[error("tenant {tenant:?}'s prefix {prefix:?} overlaps tenant {other:?}'s")]
    TenantOverlap {
        /// The tenant being set.
        tenant: String,
        /// Its prefix.
        prefix: String,
        /// The tenant it overlaps.
        other: String,
    },
    /// A quota of zero would refuse the principal everything for ever;
    /// remove its rules instead.
    #[error(
        "a quota of 0 for User:{0} would never let a request through; give at least 1, or \
         remove the principal's rules to shut it out"
    )]
    ZeroQuota(String),
    /// A bound of [`crate::constants`] would be passed.
    #[error("too many {what}: at most {max}")]
    TooMany {
        /// What is counted.
        what: String,
        /// The bound.
        max: usize,
    },
}

/// Where a principal stands with tenants.
enum Membership<'a> {
    /// In no tenant.
    None,
    /// In this tenant.
    Tenant(&'a Tenant),
    /// Placed in a tenant that was removed since.
    Removed(&'a str),
}

/// The replicated security settings: rules, tokens, tenants, quotas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    acls: Acls,
    tokens: BTreeMap<String, TokenRecord>,
    tenants: BTreeMap<String, Tenant>,
    /// A user principal's tenant.
    members: BTreeMap<String, String>,
    quotas: BTreeMap<String, Quota>,
}

impl Security {
    /// Decides one access by `principal`. Superusers are the caller's
    /// business (they come from a node's configuration): check them first.
    pub fn check(&self, principal: &Principal, access: Access<'_>) -> Result<(), Denied> {
        let denied = |reason: String| Denied {
            principal: principal.to_string(),
            operation: access.operation.to_string(),
            resource: access.resource.to_string(),
            reason,
        };
        match self.membership(principal) {
            Membership::None => {}
            Membership::Tenant(tenant) => {
                if !tenant.contains(access.resource) {
                    return Err(denied(format!(
                        "outside tenant {:?} (names starting {:?})",
                        tenant.name, tenant.prefix
                    )));
                }
            }
            // Leaving such a principal unconfined would widen its reach
            // the moment its tenant went.
            Membership::Removed(name) => {
                return Err(denied(format!(
                    "its tenant {name:?} was removed; assign it to a tenant again"
                )));
            }
        }
        self.acls
            .decide(principal, access)
            .map_err(|reason| denied(reason.to_owned()))
    }

    /// Whether `principal` may see `resource` at all (in listings and
    /// metadata): inside its tenant, and some operation on it allowed.
    pub fn visible(&self, principal: &Principal, resource: Resource<'_>) -> bool {
        Operation::ALL.into_iter().any(|operation| {
            self.check(
                principal,
                Access {
                    operation,
                    resource,
                },
            )
            .is_ok()
        })
    }

    /// The tenant `principal` belongs to, if any.
    pub fn tenant_of(&self, principal: &Principal) -> Option<&Tenant> {
        let name = self.members.get(principal.user_name()?)?;
        self.tenants.get(name)
    }

    /// Whether a name that is no topic or group (a named producer's) lies
    /// inside `principal`'s tenant, when it is in one; why not, if not.
    /// Such names share the tenant's prefix, so that one tenant cannot
    /// fence another's producer by taking its name.
    pub fn confine(&self, principal: &Principal, name: &str) -> Result<(), String> {
        match self.membership(principal) {
            Membership::None => Ok(()),
            Membership::Tenant(tenant) if name.starts_with(&tenant.prefix) => Ok(()),
            Membership::Tenant(tenant) => Err(format!(
                "outside tenant {:?} (names starting {:?})",
                tenant.name, tenant.prefix
            )),
            Membership::Removed(name) => Err(format!(
                "its tenant {name:?} was removed; assign it to a tenant again"
            )),
        }
    }

    fn membership(&self, principal: &Principal) -> Membership<'_> {
        let Some(name) = principal
            .user_name()
            .and_then(|user| self.members.get(user))
        else {
            return Membership::None;
        };
        match self.tenants.get(name) {
            Some(tenant) => Membership::Tenant(tenant),
            None => Membership::Removed(name),
        }
    }

    /// Every user principal placed in a tenant, with its tenant's name.
    pub fn members(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members
            .iter()
            .map(|(principal, tenant)| (principal.as_str(), tenant.as_str()))
    }

    /// Every user principal with a quota, with it.
    pub fn quotas(&self) -> impl Iterator<Item = (&str, Quota)> {
        self.quotas
            .iter()
            .map(|(principal, quota)| (principal.as_str(), *quota))
    }

    /// The rules.
    pub fn acls(&self) -> &Acls {
        &self.acls
    }

    /// The token with this id, if it exists and is not revoked.
    pub fn token(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.get(id).filter(|record| !record.revoked)
    }

    /// Every token, revoked ones included.
    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    /// Every tenant.
    pub fn tenants(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.values()
    }

    /// A user principal's quota, if it has one.
    pub fn quota(&self, principal: &Principal) -> Option<Quota> {
        self.quotas.get(principal.user_name()?).copied()
    }

    /// Applies one change.
    pub fn apply(&mut self, op: &SecurityOp) -> Result<(), SecurityError> {
        use crate::constants::{QUOTAS_MAX, TENANT_MEMBERS_MAX, TENANTS_MAX, TOKENS_MAX};
        match op {
            SecurityOp::AddRule(rule) => self.acls.add(rule.clone())?,
            SecurityOp::RemoveRule(rule) => self.acls.remove(rule),
            SecurityOp::CreateToken(record) => {
                record.check()?;
                if self.tokens.contains_key(&record.id) {
                    return Err(SecurityError::TokenExists(record.id.clone()));
                }
                if self.tokens.len() >= TOKENS_MAX {
                    return Err(SecurityError::TooMany {
                        what: "tokens".to_owned(),
                        max: TOKENS_MAX,
                    });
                }
                self.tokens.insert(record.id.clone(), record.clone());
            }
            SecurityOp::RevokeToken { id } => match self.tokens.get_mut(id) {
                Some(record) => record.revoked = true,
                None => return Err(SecurityError::UnknownToken(id.clone())),
            },
            SecurityOp::SetTenant(tenant) => {
                NamePattern::check_name(&tenant.name)?;
                NamePattern::check_name(&tenant.prefix)?;
                if let Some(other) = self.tenants.values().find(|other| {
                    other.name != tenant.name
                        && (other.prefix.starts_with(&tenant.prefix)
                            || tenant.prefix.starts_with(&other.prefix))
                }) {
                    return Err(SecurityError::TenantOverlap {
                        tenant: tenant.name.clone(),
                        prefix: tenant.prefix.clone(),
                        other: other.name.clone(),
                    });
                }
                if !self.tenants.contains_key(&tenant.name) && self.tenants.len() >= TENANTS_MAX {
                    return Err(SecurityError::TooMany {
                        what: "tenants".to_owned(),
                        max: TENANTS_MAX,
                    });
                }
                self.tenants.insert(tenant.name.clone(), tenant.clone());
            }
            SecurityOp::RemoveTenant { name } => {
                if self.tenants.remove(name).is_none() {
                    return Err(SecurityError::UnknownTenant(name.clone()));
                }
            }
            SecurityOp::AssignTenant { principal, tenant } => {
                if !valid_principal_name(principal) {
                    return Err(RuleError::Principal(principal.clone()).into());
                }
                match tenant {
                    Some(tenant) if !self.tenants.contains_key(tenant) => {
                        return Err(SecurityError::UnknownTenant(tenant.clone()));
                    }
                    Some(tenant) => {
                        if !self.members.contains_key(principal)
                            && self.members.len() >= TENANT_MEMBERS_MAX
                        {
                            return Err(SecurityError::TooMany {
                                what: "tenant members".to_owned(),
                                max: TENANT_MEMBERS_MAX,
                            });
                        }
                        self.members.insert(principal.clone(), tenant.clone());
                    }
                    None => {
                        self.members.remove(principal);
                    }
                }
            }
            SecurityOp::SetQuota { principal, quota } => {
                if !valid_principal_name(principal) {
                    return Err(RuleError::Principal(principal.clone()).into());
                }
                match quota {
                    Some(quota) => {
                        if quota.bytes_per_second == Some(0) || quota.requests_per_second == Some(0)
                        {
                            return Err(SecurityError::ZeroQuota(principal.clone()));
                        }
                        if !self.quotas.contains_key(principal) && self.quotas.len() >= QUOTAS_MAX {
                            return Err(SecurityError::TooMany {
                                what: "quotas".to_owned(),
                                max: QUOTAS_MAX,
                            });
                        }
                        self.quotas.insert(principal.clone(), *quota);
                    }
                    None => {
                        self.quotas.remove(principal);
                    }
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for SecurityOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecurityOp::AddRule(rule) => write!(f, "add rule {rule}"),
            SecurityOp::RemoveRule(rule) => write!(f, "remove rule {rule}"),
            SecurityOp::CreateToken(record) => {
                write!(
                    f,
                    "create token {} for User:{}",
                    record.id, record.principal
                )
            }
            SecurityOp::RevokeToken { id } => write!(f, "revoke token {id}"),
            SecurityOp::SetTenant(tenant) => {
                write!(f, "set tenant {} (prefix {:?})", tenant.name, tenant.prefix)
            }
            SecurityOp::RemoveTenant { name } => write!(f, "remove tenant {name}"),
            SecurityOp::AssignTenant {
                principal,
                tenant: Some(tenant),
            } => write!(f, "put User:{principal} in tenant {tenant}"),
            SecurityOp::AssignTenant {
                principal,
                tenant: None,
            } => write!(f, "take User:{principal} out of its tenant"),
            SecurityOp::SetQuota {
                principal,
                quota: Some(quota),
            } => write!(
                f,
                "set the quota of User:{principal} to {:?} bytes/s, {:?} requests/s",
                quota.bytes_per_second, quota.requests_per_second
            ),
            SecurityOp::SetQuota {
                principal,
                quota: None,
            } => write!(f, "remove the quota of User:{principal}"),
        }
    }
}

impl Tenant {
    /// Whether `resource` lies inside the tenant: topics and groups whose
    /// names start with its prefix. The cluster and the audit trail are
    /// no tenant's.
    pub fn contains(&self, resource: Resource<'_>) -> bool {
        match resource {
            Resource::Topic(name) | Resource::Group(name) => name.starts_with(&self.prefix),
            Resource::Cluster | Resource::Audit => false,
        }
    }
}

#[cfg(test)]
mod tests;
