//! `sluice acl`, `sluice token`, `sluice tenant`, `sluice quota`: the
//! security settings of a running cluster. Every change needs `admin` on
//! the cluster and is written as an admin entry naming who made it.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use sluice_audit::admin::utc;
use sluice_client::client::Client;
use sluice_client::protocol::{SecurityItems, SecuritySection};
use sluice_model::security::{Principal, Quota, Rule, SecurityOp, Tenant, Token};

use super::{ClusterArgs, Outcome, runtime};

/// `sluice acl`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AclCommand {
    /// Add a rule: PRINCIPAL (User:NAME, NAME, Anonymous or * for
    /// everyone) may (allow) or may not (deny) do OPERATION on RESOURCE.
    /// A deny wins over every allow; with no rule, nothing is allowed.
    Add {
        #[command(flatten)]
        rule: RuleArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Remove a rule (given exactly as it was added).
    Remove {
        #[command(flatten)]
        rule: RuleArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// List the rules, one per line as `acl add` takes them.
    List {
        /// Only the rules naming this principal (or `*`).
        #[arg(long)]
        principal: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

/// A rule's four parts, as on the command line.
#[derive(Debug, clap::Args)]
pub(crate) struct RuleArgs {
    /// User:NAME (or NAME), Anonymous, or * for every principal.
    principal: String,
    /// topic:NAME, topic:PREFIX*, group:NAME, group:PREFIX*, cluster or
    /// audit.
    resource: String,
    /// publish, consume, create, delete, alter, admin, audit-export,
    /// erase, replay, or all.
    operation: String,
    /// allow or deny.
    effect: String,
}

impl RuleArgs {
    fn rule(&self) -> Result<Rule, Box<dyn std::error::Error>> {
        Ok(Rule::parse(
            &self.principal,
            &self.resource,
            &self.operation,
            &self.effect,
        )?)
    }
}

/// `sluice token`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token that authenticates as User:NAME; it is printed once
    /// (only a salted hash of it is stored).
    Create {
        /// The user principal it authenticates as (User:NAME or NAME).
        #[arg(long)]
        principal: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Revoke a token: connections presenting it are refused from now on.
    Revoke {
        /// The token's id (the 16 hex digits after `sluice-token.`).
        id: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// List the tokens: id, principal, creation time, revoked or not.
    List {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

/// `sluice tenant`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TenantCommand {
    /// Create a tenant, or change its prefix: its principals reach only
    /// topics and groups whose names start with the prefix.
    Set {
        /// The tenant's name.
        name: String,
        /// The prefix of its topic and group names (for example `acme.`);
        /// no two tenants' prefixes may overlap.
        #[arg(long)]
        prefix: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Remove a tenant: its principals reach nothing until assigned
    /// again.
    Remove {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Put a user principal into a tenant.
    Assign {
        /// User:NAME or NAME.
        principal: String,
        /// The tenant's name.
        tenant: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Take a user principal out of its tenant.
    Unassign {
        /// User:NAME or NAME.
        principal: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// List the tenants and their principals.
    List {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

/// `sluice quota`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum QuotaCommand {
    /// Limit a user principal's requests: past a limit the leader answers
    /// with a wait the client sits out (nothing is refused or lost).
    Set {
        /// User:NAME or NAME.
        principal: String,
        /// Bytes of requests a second (bursts up to a second's worth).
        #[arg(long, value_name = "N")]
        bytes_per_second: Option<u64>,
        /// Requests a second (bursts up to a second's worth).
        #[arg(long, value_name = "N")]
        requests_per_second: Option<u64>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Remove a user principal's quota.
    Remove {
        /// User:NAME or NAME.
        principal: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// List the quotas.
    List {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

/// The name of a user principal given as `User:NAME` or `NAME`.
fn user(text: &str) -> Result<String, Box<dyn std::error::Error>> {
    match Principal::parse(text)? {
        Principal::User(name) => Ok(name.to_string()),
        other => Err(format!(
            "{other} is not a user principal; tokens, tenants and quotas are for User:NAME"
        )
        .into()),
    }
}

pub(crate) fn acl(command: AclCommand) -> Outcome {
    runtime()?.block_on(async move {
        match command {
            AclCommand::Add { rule, cluster } => {
                let rule = rule.rule()?;
                cluster
                    .client()?
                    .security(SecurityOp::AddRule(rule.clone()))
                    .await?;
                println!("added: {rule}");
            }
            AclCommand::Remove { rule, cluster } => {
                let rule = rule.rule()?;
                let client = cluster.client()?;
                let exists = rules(&client).await?.contains(&rule);
                client
                    .security(SecurityOp::RemoveRule(rule.clone()))
                    .await?;
                if exists {
                    println!("removed: {rule}");
                } else {
                    println!("no such rule (nothing changed): {rule}");
                }
            }
            AclCommand::List { principal, cluster } => {
                let principal = principal.map(|p| Principal::parse(&p)).transpose()?;
                for rule in rules(&cluster.client()?).await? {
                    let shown = match (&principal, &rule.principal) {
                        (None, _) | (_, None) => true,
                        (Some(wanted), Some(named)) => wanted == named,
                    };
                    if shown {
                        println!("{rule}");
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn rules(client: &Client) -> Result<Vec<Rule>, Box<dyn std::error::Error>> {
    let mut rules = Vec::new();
    for page in client.security_list(SecuritySection::Rules).await? {
        if let SecurityItems::Rules(items) = page {
            rules.extend(items);
        }
    }
    Ok(rules)
}

pub(crate) fn token(command: TokenCommand) -> Outcome {
    runtime()?.block_on(async move {
        match command {
            TokenCommand::Create { principal, cluster } => {
                let principal = user(&principal)?;
                let mut id = [0; 8];
                let mut secret = [0; 32];
                let mut salt = [0; 16];
                for buffer in [&mut id[..], &mut secret[..], &mut salt[..]] {
                    getrandom::fill(buffer)
                        .map_err(|error| format!("no randomness for the token: {error}"))?;
                }
                let token = Token::new(id, secret);
                let created_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |since| since.as_millis() as u64);
                let record = token.record(&principal, salt, created_ms)?;
                cluster
                    .client()?
                    .security(SecurityOp::CreateToken(record))
                    .await?;
                println!("{}", token.expose());
                eprintln!(
                    "token {} authenticates as User:{principal}; it is shown only now (the \
                     cluster keeps a salted hash): store it where its user reads it",
                    token.id()
                );
            }
            TokenCommand::Revoke { id, cluster } => {
                cluster
                    .client()?
                    .security(SecurityOp::RevokeToken { id: id.clone() })
                    .await?;
                println!("revoked token {id}");
            }
            TokenCommand::List { cluster } => {
                let pages = cluster
                    .client()?
                    .security_list(SecuritySection::Tokens)
                    .await?;
                for page in pages {
                    let SecurityItems::Tokens(tokens) = page else {
                        continue;
                    };
                    for token in tokens {
                        println!(
                            "{}\tUser:{}\t{}\t{}",
                            token.id,
                            token.principal,
                            utc(token.created_ms),
                            if token.revoked { "revoked" } else { "active" }
                        );
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) fn tenant(command: TenantCommand) -> Outcome {
    runtime()?.block_on(async move {
        match command {
            TenantCommand::Set {
                name,
                prefix,
                cluster,
            } => {
                let tenant = Tenant {
                    name: name.clone(),
                    prefix: prefix.clone(),
                };
                cluster
                    .client()?
                    .security(SecurityOp::SetTenant(tenant))
                    .await?;
                println!("tenant {name} holds the topics and groups starting {prefix:?}");
            }
            TenantCommand::Remove { name, cluster } => {
                let op = SecurityOp::RemoveTenant { name: name.clone() };
                cluster.client()?.security(op).await?;
                println!(
                    "removed tenant {name}; its principals reach nothing until assigned again"
                );
            }
            TenantCommand::Assign {
                principal,
                tenant,
                cluster,
            } => {
                let principal = user(&principal)?;
                let op = SecurityOp::AssignTenant {
                    principal: principal.clone(),
                    tenant: Some(tenant.clone()),
                };
                cluster.client()?.security(op).await?;
                println!("User:{principal} is in tenant {tenant}");
            }
            TenantCommand::Unassign { principal, cluster } => {
                let principal = user(&principal)?;
                let op = SecurityOp::AssignTenant {
                    principal: principal.clone(),
                    tenant: None,
                };
                cluster.client()?.security(op).await?;
                println!("User:{principal} is in no tenant");
            }
            TenantCommand::List { cluster } => {
                let client = cluster.client()?;
                let mut members = Vec::new();
                for page in client.security_list(SecuritySection::Members).await? {
                    if let SecurityItems::Members(items) = page {
                        members.extend(items);
                    }
                }
                for page in client.security_list(SecuritySection::Tenants).await? {
                    let SecurityItems::Tenants(tenants) = page else {
                        continue;
                    };
                    for tenant in tenants {
                        let principals: Vec<String> = members
                            .iter()
                            .filter(|(_, name)| *name == tenant.name)
                            .map(|(principal, _)| format!("User:{principal}"))
                            .collect();
                        println!(
                            "{}\t{}\t{}",
                            tenant.name,
                            tenant.prefix,
                            principals.join(",")
                        );
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) fn quota(command: QuotaCommand) -> Outcome {
    runtime()?.block_on(async move {
        match command {
            QuotaCommand::Set {
                principal,
                bytes_per_second,
                requests_per_second,
                cluster,
            } => {
                if bytes_per_second.is_none() && requests_per_second.is_none() {
                    return Err(
                        "name a limit: --bytes-per-second N, --requests-per-second N \
                                or both (`quota remove` takes a quota away)"
                            .into(),
                    );
                }
                let principal = user(&principal)?;
                let quota = Quota {
                    bytes_per_second,
                    requests_per_second,
                };
                let op = SecurityOp::SetQuota {
                    principal: principal.clone(),
                    quota: Some(quota),
                };
                cluster.client()?.security(op).await?;
                println!("User:{principal}: {}", limits(&quota));
            }
            QuotaCommand::Remove { principal, cluster } => {
                let principal = user(&principal)?;
                let op = SecurityOp::SetQuota {
                    principal: principal.clone(),
                    quota: None,
                };
                cluster.client()?.security(op).await?;
                println!("User:{principal} has no quota");
            }
            QuotaCommand::List { cluster } => {
                let pages = cluster
                    .client()?
                    .security_list(SecuritySection::Quotas)
                    .await?;
                for page in pages {
                    let SecurityItems::Quotas(quotas) = page else {
                        continue;
                    };
                    for (principal, quota) in quotas {
                        println!("User:{principal}\t{}", limits(&quota));
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn limits(quota: &Quota) -> String {
    let limit = |value: Option<u64>| value.map_or("unlimited".to_owned(), |n| n.to_string());
    format!(
        "{} bytes/s, {} requests/s",
        limit(quota.bytes_per_second),
        limit(quota.requests_per_second)
    )
}
