//! Access-control rules and their index.
//!
//! A check runs for every request, so [`Acls`] keeps its rules indexed by
//! principal and resource kind, with exact names in a hash map and
//! prefixes in one hash map probed once per distinct prefix length: a
//! check costs a handful of hash lookups whatever the number of rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Access, Effect, Operation, Principal, Resource};
use crate::constants::{ACL_RULES_MAX, PRINCIPAL_NAME_MAX};

/// A topic or group name pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NamePattern {
    /// Exactly this name.
    Exact(String),
    /// Every name starting with this; the empty prefix matches every name.
    Prefix(String),
}

impl NamePattern {
    /// Parses `NAME` (exact), `PREFIX*` (prefix) or `*` (every name).
    pub fn parse(text: &str) -> Result<NamePattern, RuleError> {
        match text.strip_suffix('*') {
            Some(prefix) => {
                if !prefix.is_empty() {
                    NamePattern::check_name(prefix)?;
                }
                Ok(NamePattern::Prefix(prefix.to_owned()))
            }
            None => {
                NamePattern::check_name(text)?;
                Ok(NamePattern::Exact(text.to_owned()))
            }
        }
    }

    /// A topic, group or tenant name (or prefix): 1 to
    /// [`PRINCIPAL_NAME_MAX`] characters of `[A-Za-z0-9._-]`.
    pub fn check_name(name: &str) -> Result<(), RuleError> {
        let valid = !name.is_empty()
            && name.len() <= PRINCIPAL_NAME_MAX
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte));
        if valid {
            Ok(())
        } else {
            Err(RuleError::Name(name.to_owned()))
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(exact) => exact == name,
            NamePattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamePattern::Exact(name) => f.write_str(name),
            NamePattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// What a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ResourcePattern {
    /// Topics whose names match.
    Topic(NamePattern),
    /// Consumer groups whose names match.
    Group(NamePattern),
    /// The cluster.
    Cluster,
    /// The audit trail.
    Audit,
}

impl ResourcePattern {
    /// Parses `topic:PATTERN`, `group:PATTERN`, `cluster` or `audit`
    /// (patterns as [`NamePattern::parse`]).
    pub fn parse(text: &str) -> Result<ResourcePattern, RuleError> {
        match text.split_once(':') {
            Some(("topic", pattern)) => Ok(ResourcePattern::Topic(NamePattern::parse(pattern)?)),
            Some(("group", pattern)) => Ok(ResourcePattern::Group(NamePattern::parse(pattern)?)),
            None if text == "cluster" => Ok(ResourcePattern::Cluster),
            None if text == "audit" => Ok(ResourcePattern::Audit),
            _ => Err(RuleError::Resource(text.to_owned())),
        }
    }

    fn kind(&self) -> usize {
        match self {
            ResourcePattern::Topic(_) => 0,
            ResourcePattern::Group(_) => 1,
            ResourcePattern::Cluster => 2,
            ResourcePattern::Audit => 3,
        }
    }

    /// Whether the pattern covers `resource`.
    pub fn matches(&self, resource: Resource<'_>) -> bool {
        match (self, resource) {
            (ResourcePattern::Topic(pattern), Resource::Topic(name))
            | (ResourcePattern::Group(pattern), Resource::Group(name)) => pattern.matches(name),
            (ResourcePattern::Cluster, Resource::Cluster)
            | (ResourcePattern::Audit, Resource::Audit) => true,
            _ => false,
        }
    }
}

impl fmt::Display for ResourcePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourcePattern::Topic(pattern) => write!(f, "topic:{pattern}"),
            ResourcePattern::Group(pattern) => write!(f, "group:{pattern}"),
            ResourcePattern::Cluster => f.write_str("cluster"),
            ResourcePattern::Audit => f.write_str("audit"),
        }
    }
}

fn kind_of(resource: Resource<'_>) -> (usize, &str) {
    match resource {
        Resource::Topic(name) => (0, name),
        Resource::Group(name) => (1, name),
        Resource::Cluster => (2, ""),
        Resource::Audit => (3, ""),
    }
}

/// One access-control rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rule {
    /// Whom it applies to; `None`: every principal.
    pub principal: Option<Principal>,
    /// What it applies to.
    pub resource: ResourcePattern,
    /// Which operation; `None`: every operation.
    pub operation: Option<Operation>,
    /// Allow or deny.
    pub effect: Effect,
}

impl Rule {
    /// Parses a rule's four parts as the command line gives them:
    /// principal (`User:NAME`, `NAME` or `*`), resource
    /// ([`ResourcePattern::parse`]), operation (a name or `all`), effect
    /// (`allow` or `deny`).
    pub fn parse(
        principal: &str,
        resource: &str,
        operation: &str,
        effect: &str,
    ) -> Result<Rule, RuleError> {
        let principal = match principal {
            "*" => None,
            principal => Some(Principal::parse(principal)?),
        };
        let operation = match operation {
            "all" => None,
            operation => Some(Operation::parse(operation)?),
        };
        let effect = match effect {
            "allow" => Effect::Allow,
            "deny" => Effect::Deny,
            effect => return Err(RuleError::Effect(effect.to_owned())),
        };
        Ok(Rule {
            principal,
            resource: ResourcePattern::parse(resource)?,
            operation,
            effect,
        })
    }

    fn check(&self) -> Result<(), RuleError> {
        let name = match &self.resource {
            ResourcePattern::Topic(pattern) | ResourcePattern::Group(pattern) => pattern,
            ResourcePattern::Cluster | ResourcePattern::Audit => return Ok(()),
        };
        match name {
            NamePattern::Exact(name) => NamePattern::check_name(name),
            NamePattern::Prefix(prefix) if prefix.is_empty() => Ok(()),
            NamePattern::Prefix(prefix) => NamePattern::check_name(prefix),
        }
    }

    fn mask(&self) -> u16 {
        match self.operation {
            Some(operation) => 1 << operation as u16,
            None => (1 << Operation::ALL.len()) - 1,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.principal {
            Some(principal) => write!(f, "{principal}")?,
            None => f.write_str("*")?,
        }
        write!(f, " {} ", self.resource)?;
        match self.operation {
            Some(operation) => write!(f, "{operation}")?,
            None => f.write_str("all")?,
        }
        match self.effect {
            Effect::Allow => f.write_str(" allow"),
            Effect::Deny => f.write_str(" deny"),
        }
    }
}

/// A malformed rule or name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RuleError {
    /// Not `User:NAME`, `Node:ID`, `Anonymous` or a valid name.
    #[error(
        "{0:?} is not a principal: use User:NAME (1 to 255 printable characters, no spaces or colons)"
    )]
    Principal(String),
    /// Not `topic:PATTERN`, `group:PATTERN`, `cluster` or `audit`.
    #[error(
        "{0:?} is not a resource: use topic:NAME, topic:PREFIX*, group:NAME, group:PREFIX*, cluster or audit"
    )]
    Resource(String),
    /// Not an operation's name.
    #[error(
        "{0:?} is not an operation: use publish, consume, create, delete, alter, admin, audit-export, erase, replay or all"
    )]
    Operation(String),
    /// Not `allow` or `deny`.
    #[error("{0:?} is not an effect: use allow or deny")]
    Effect(String),
    /// A name with characters outside `[A-Za-z0-9._-]`, empty or too long.
    #[error("{0:?} is not a valid name: 1 to 255 characters of [A-Za-z0-9._-]")]
    Name(String),
    /// [`ACL_RULES_MAX`] rules exist already.
    #[error("there are {ACL_RULES_MAX} rules already; remove some first")]
    TooMany,
}

/// The allowed and denied operations of the rules that match, as bit
/// masks over [`Operation`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Masks {
    allow: u16,
    deny: u16,
}

impl Masks {
    fn add(&mut self, rule: &Rule) {
        match rule.effect {
            Effect::Allow => self.allow |= rule.mask(),
            Effect::Deny => self.deny |= rule.mask(),
        }
    }

    fn union(&mut self, other: Masks) {
        self.allow |= other.allow;
        self.deny |= other.deny;
    }
}

/// One principal's (or every principal's) rules for one resource kind.
#[derive(Debug, Clone, Default)]
struct KindIndex {
    exact: HashMap<String, Masks>,
    prefixes: HashMap<String, Masks>,
    /// The distinct prefix lengths, ascending: a check probes `prefixes`
    /// once per length no longer than the name.
    prefix_lengths: Vec<usize>,
}

impl KindIndex {
    fn add(&mut self, rule: &Rule) {
        match &rule.resource {
            ResourcePattern::Topic(NamePattern::Exact(name))
            | ResourcePattern::Group(NamePattern::Exact(name)) => {
                self.exact.entry(name.clone()).or_default().add(rule);
            }
            ResourcePattern::Topic(NamePattern::Prefix(prefix))
            | ResourcePattern::Group(NamePattern::Prefix(prefix)) => {
                self.prefixes.entry(prefix.clone()).or_default().add(rule);
                if let Err(at) = self.prefix_lengths.binary_search(&prefix.len()) {
                    self.prefix_lengths.insert(at, prefix.len());
                }
            }
            ResourcePattern::Cluster | ResourcePattern::Audit => {
                self.exact.entry(String::new()).or_default().add(rule);
            }
        }
    }

    fn masks(&self, name: &str) -> Masks {
        let mut masks = self.exact.get(name).copied().unwrap_or_default();
        for &length in &self.prefix_lengths {
            let Some(prefix) = name.get(..length) else {
                break;
            };
            if let Some(found) = self.prefixes.get(prefix) {
                masks.union(*found);
            }
        }
        masks
    }
}

type Kinds = [KindIndex; 4];

/// The rules, indexed for checks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "BTreeSet<Rule>", into = "BTreeSet<Rule>")]
pub struct Acls {
    rules: BTreeSet<Rule>,
    /// Rules naming a principal, by principal.
    by_principal: BTreeMap<Principal, Kinds>,
    /// Rules for every principal.
    everyone: Kinds,
}

impl PartialEq for Acls {
    fn eq(&self, other: &Acls) -> bool {
        self.rules == other.rules
    }
}

impl Eq for Acls {}

impl From<BTreeSet<Rule>> for Acls {
    fn from(rules: BTreeSet<Rule>) -> Acls {
        let mut acls = Acls::default();
        for rule in rules {
            acls.index(&rule);
            acls.rules.insert(rule);
        }
        acls
    }
}

impl From<Acls> for BTreeSet<Rule> {
    fn from(acls: Acls) -> BTreeSet<Rule> {
        acls.rules
    }
}

impl Acls {
    /// Every rule, in order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Adds `rule`; adding one that exists changes nothing.
    pub fn add(&mut self, rule: Rule) -> Result<(), RuleError> {
        rule.check()?;
        if self.rules.contains(&rule) {
            return Ok(());
        }
        if self.rules.len() >= ACL_RULES_MAX {
            return Err(RuleError::TooMany);
        }
        self.index(&rule);
        self.rules.insert(rule);
        Ok(())
    }

    /// Removes `rule` if it exists. Rebuilds the index: removals are rare
    /// admin actions, checks are every request.
    pub fn remove(&mut self, rule: &Rule) {
        if self.rules.remove(rule) {
            let rules = std::mem::take(&mut self.rules);
            *self = Acls::from(rules);
        }
    }

    fn index(&mut self, rule: &Rule) {
        let kinds = match &rule.principal {
            Some(principal) => self.by_principal.entry(principal.clone()).or_default(),
            None => &mut self.everyone,
        };
        kinds[rule.resource.kind()].add(rule);
    }

    /// Allows `access` by `principal` if a rule allows it and none denies
    /// it; else says why not.
    pub fn decide(&self, principal: &Principal, access: Access<'_>) -> Result<(), &'static str> {
        let (kind, name) = kind_of(access.resource);
        let mut masks = self.everyone[kind].masks(name);
        if let Some(kinds) = self.by_principal.get(principal) {
            masks.union(kinds[kind].masks(name));
        }
        let bit = 1 << access.operation as u16;
        if masks.deny & bit != 0 {
            Err("a deny rule matches")
        } else if masks.allow & bit != 0 {
            Ok(())
        } else {
            Err("no rule allows it")
        }
    }
}
