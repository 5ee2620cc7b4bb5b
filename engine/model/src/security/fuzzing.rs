//! Entry point of the `acl_decode` fuzz target: must return normally for
//! every input.
//!
//! Security changes reach a node as postcard bytes (in a client's admin
//! request, in log entries and snapshots) and rules as text on the
//! command line, so the target feeds arbitrary bytes to both decoders and
//! checks what decodes: applying decoded changes keeps the index in
//! agreement with a plain scan of the rules, the settings round-trip
//! through their encoding, and a parsed rule prints back to itself.

use super::{Access, Effect, Operation, Principal, Resource, Rule, Security, SecurityOp};

/// Decodes `data` as security changes and as rule text; panics only if a
/// decoded value breaks an invariant.
pub fn acl_decode(data: &[u8]) {
    if let Ok(ops) = postcard::from_bytes::<Vec<SecurityOp>>(data) {
        let mut security = Security::default();
        for op in &ops {
            let _ = security.apply(op);
        }
        check_index(&security);
        let bytes = postcard::to_allocvec(&security).expect("settings encode");
        let again: Security = postcard::from_bytes(&bytes).expect("encoded settings decode");
        assert_eq!(again, security, "the settings round-trip");
        check_index(&again);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let parts: Vec<&str> = text.split(' ').collect();
        if let [principal, resource, operation, effect] = parts[..] {
            if let Ok(rule) = Rule::parse(principal, resource, operation, effect) {
                let printed = rule.to_string();
                let parts: Vec<&str> = printed.split(' ').collect();
                let reparsed = Rule::parse(parts[0], parts[1], parts[2], parts[3])
                    .expect("a printed rule parses");
                assert_eq!(reparsed, rule, "a rule prints as it parses");
            }
        }
    }
}

/// Every check of the rules' own principals and names agrees with a scan.
fn check_index(security: &Security) {
    let rules: Vec<&Rule> = security.acls().rules().collect();
    let mut principals: Vec<Principal> = rules
        .iter()
        .filter_map(|rule| rule.principal.clone())
        .collect();
    principals.push(Principal::user("fuzz"));
    let names: Vec<String> = rules
        .iter()
        .filter_map(|rule| match &rule.resource {
            super::ResourcePattern::Topic(pattern) | super::ResourcePattern::Group(pattern) => {
                Some(pattern.to_string().trim_end_matches('*').to_owned())
            }
            _ => None,
        })
        .chain([String::new(), "x".to_owned()])
        .collect();
    for principal in principals.iter().take(8) {
        for name in names.iter().take(8) {
            for resource in [
                Resource::Topic(name),
                Resource::Group(name),
                Resource::Cluster,
                Resource::Audit,
            ] {
                for operation in Operation::ALL {
                    let access = Access {
                        operation,
                        resource,
                    };
                    let effects: Vec<Effect> = rules
                        .iter()
                        .filter(|rule| {
                            rule.principal.as_ref().is_none_or(|p| p == principal)
                                && rule.resource.matches(resource)
                                && rule.operation.is_none_or(|o| o == operation)
                        })
                        .map(|rule| rule.effect)
                        .collect();
                    let scanned =
                        !effects.contains(&Effect::Deny) && effects.contains(&Effect::Allow);
                    assert_eq!(
                        security.acls().decide(principal, access).is_ok(),
                        scanned,
                        "{principal} {operation} {resource}"
                    );
                }
            }
        }
    }
}
