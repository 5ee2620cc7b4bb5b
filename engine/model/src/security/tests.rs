use super::*;

fn rule(principal: &str, resource: &str, operation: &str, effect: &str) -> Rule {
    Rule::parse(principal, resource, operation, effect).unwrap()
}

fn access(operation: Operation, resource: Resource<'_>) -> Access<'_> {
    Access {
        operation,
        resource,
    }
}

fn security(rules: &[Rule]) -> Security {
    let mut security = Security::default();
    for rule in rules {
        security.apply(&SecurityOp::AddRule(rule.clone())).unwrap();
    }
    security
}

#[test]
fn no_rule_denies_and_names_principal_operation_and_resource() {
    let alice = Principal::user("alice");
    let denied = Security::default()
        .check(
            &alice,
            access(Operation::Publish, Resource::Topic("orders")),
        )
        .unwrap_err();
    assert_eq!(
        denied.to_string(),
        "User:alice may not publish on topic \"orders\": no rule allows it"
    );
}

#[test]
fn deny_wins_over_allow_whatever_their_order() {
    let alice = Principal::user("alice");
    for rules in [
        [
            rule("User:alice", "topic:orders*", "all", "allow"),
            rule("*", "topic:orders.secret", "publish", "deny"),
        ],
        [
            rule("*", "topic:orders.secret", "publish", "deny"),
            rule("User:alice", "topic:orders*", "all", "allow"),
        ],
    ] {
        let security = security(&rules);
        let secret = Resource::Topic("orders.secret");
        assert!(
            security
                .check(&alice, access(Operation::Publish, secret))
                .is_err()
        );
        assert!(
            security
                .check(&alice, access(Operation::Consume, secret))
                .is_ok()
        );
        assert!(
            security
                .check(
                    &alice,
                    access(Operation::Publish, Resource::Topic("orders.eu"))
                )
                .is_ok()
        );
        assert!(
            security
                .check(
                    &alice,
                    access(Operation::Publish, Resource::Topic("payments"))
                )
                .is_err()
        );
    }
}

#[test]
fn rules_for_one_principal_do_not_apply_to_another_or_to_other_kinds() {
    let security = security(&[rule("alice", "topic:orders", "consume", "allow")]);
    let bob = Principal::user("bob");
    let alice = Principal::user("alice");
    assert!(
        security
            .check(&bob, access(Operation::Consume, Resource::Topic("orders")))
            .is_err()
    );
    assert!(
        security
            .check(
                &alice,
                access(Operation::Consume, Resource::Group("orders"))
            )
            .is_err()
    );
    assert!(
        security
            .check(
                &alice,
                access(Operation::Consume, Resource::Topic("orders"))
            )
            .is_ok()
    );
}

#[test]
fn removing_a_rule_takes_its_effect_away() {
    let allow = rule("alice", "cluster", "admin", "allow");
    let mut security = security(std::slice::from_ref(&allow));
    let alice = Principal::user("alice");
    assert!(
        security
            .check(&alice, access(Operation::Admin, Resource::Cluster))
            .is_ok()
    );
    security.apply(&SecurityOp::RemoveRule(allow)).unwrap();
    assert!(
        security
            .check(&alice, access(Operation::Admin, Resource::Cluster))
            .is_err()
    );
    assert!(security.acls().is_empty());
}

#[test]
fn a_tenant_principal_reaches_nothing_outside_its_prefix() {
    let mut security = security(&[rule("*", "topic:*", "all", "allow")]);
    security
        .apply(&SecurityOp::SetTenant(Tenant {
            name: "acme".into(),
            prefix: "acme.".into(),
        }))
        .unwrap();
    security
        .apply(&SecurityOp::AssignTenant {
            principal: "alice".into(),
            tenant: Some("acme".into()),
        })
        .unwrap();
    let alice = Principal::user("alice");
    assert!(
        security
            .check(
                &alice,
                access(Operation::Consume, Resource::Topic("acme.orders"))
            )
            .is_ok()
    );
    let outside = security
        .check(
            &alice,
            access(Operation::Consume, Resource::Topic("globex.orders")),
        )
        .unwrap_err();
    assert!(outside.reason.contains("outside tenant"), "{outside}");
    assert!(!security.visible(&alice, Resource::Topic("globex.orders")));
    assert!(security.visible(&Principal::user("bob"), Resource::Topic("globex.orders")));
    // Names that are no topic or group (a named producer's) too.
    assert!(security.confine(&alice, "acme.ingest").is_ok());
    let reason = security.confine(&alice, "globex.ingest").unwrap_err();
    assert!(reason.contains("outside tenant"), "{reason}");
    assert!(
        security
            .confine(&Principal::user("bob"), "globex.ingest")
            .is_ok()
    );
}

#[test]
fn a_principal_whose_tenant_was_removed_reaches_nothing() {
    let mut security = security(&[rule("*", "topic:*", "all", "allow")]);
    let acme = Tenant {
        name: "acme".into(),
        prefix: "acme.".into(),
    };
    security
        .apply(&SecurityOp::SetTenant(acme.clone()))
        .unwrap();
    security
        .apply(&SecurityOp::AssignTenant {
            principal: "alice".into(),
            tenant: Some("acme".into()),
        })
        .unwrap();
    security
        .apply(&SecurityOp::RemoveTenant {
            name: "acme".into(),
        })
        .unwrap();
    let alice = Principal::user("alice");
    for name in ["acme.orders", "globex.orders"] {
        let refused = security
            .check(&alice, access(Operation::Consume, Resource::Topic(name)))
            .unwrap_err();
        assert!(refused.reason.contains("was removed"), "{refused}");
    }
    assert_eq!(security.members().collect::<Vec<_>>(), [("alice", "acme")]);
    security.apply(&SecurityOp::SetTenant(acme)).unwrap();
    assert!(
        security
            .check(
                &alice,
                access(Operation::Consume, Resource::Topic("acme.orders"))
            )
            .is_ok()
    );
}

#[test]
fn a_zero_quota_is_refused_and_quotas_are_listed() {
    let mut security = Security::default();
    let set = |bytes, requests| SecurityOp::SetQuota {
        principal: "alice".into(),
        quota: Some(Quota {
            bytes_per_second: bytes,
            requests_per_second: requests,
        }),
    };
    assert_eq!(
        security.apply(&set(Some(0), None)),
        Err(SecurityError::ZeroQuota("alice".into()))
    );
    assert_eq!(
        security.apply(&set(None, Some(0))),
        Err(SecurityError::ZeroQuota("alice".into()))
    );
    security.apply(&set(Some(1000), None)).unwrap();
    let listed: Vec<(&str, Quota)> = security.quotas().collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1.bytes_per_second, Some(1000));
    assert_eq!(security.quota(&Principal::user("alice")), Some(listed[0].1));
}

#[test]
fn tenant_prefixes_may_not_overlap() {
    let mut security = Security::default();
    let tenant = |name: &str, prefix: &str| {
        SecurityOp::SetTenant(Tenant {
            name: name.into(),
            prefix: prefix.into(),
        })
    };
    security.apply(&tenant("acme", "acme.")).unwrap();
    assert!(matches!(
        security.apply(&tenant("acme-eu", "acme.eu.")),
        Err(SecurityError::TenantOverlap { .. })
    ));
    security.apply(&tenant("acme", "acme-corp.")).unwrap();
    security.apply(&tenant("acme-eu", "acme.eu.")).unwrap();
}

#[test]
fn a_token_verifies_until_revoked_and_its_record_holds_no_secret() {
    let token = Token::new([1; 8], [2; 32]);
    let parsed = Token::parse(&token.expose()).unwrap();
    assert_eq!(parsed, token);
    let record = token.record("svc", [3; 16], 5).unwrap();
    let encoded = postcard::to_allocvec(&record).unwrap();
    assert!(!encoded.windows(32).any(|window| window == [2; 32]));
    assert!(record.verifies(&token));
    assert!(!record.verifies(&Token::new([1; 8], [4; 32])));

    let mut security = Security::default();
    security
        .apply(&SecurityOp::CreateToken(record.clone()))
        .unwrap();
    assert_eq!(
        security.apply(&SecurityOp::CreateToken(record)),
        Err(SecurityError::TokenExists(token.id().to_owned()))
    );
    assert!(security.token(token.id()).is_some());
    security
        .apply(&SecurityOp::RevokeToken {
            id: token.id().to_owned(),
        })
        .unwrap();
    assert!(security.token(token.id()).is_none());
}

#[test]
fn malformed_tokens_rules_and_names_are_refused_by_name() {
    for text in [
        "",
        "sluice-token.00",
        "sluice-token.zz.00",
        "other.0101010101010101.00",
    ] {
        assert_eq!(Token::parse(text), Err(TokenError::Malformed), "{text:?}");
    }
    assert!(matches!(
        Rule::parse("User:a b", "cluster", "admin", "allow"),
        Err(RuleError::Principal(_))
    ));
    assert!(matches!(
        Rule::parse("*", "topics:x", "admin", "allow"),
        Err(RuleError::Resource(_))
    ));
    assert!(matches!(
        Rule::parse("*", "topic:x", "write", "allow"),
        Err(RuleError::Operation(_))
    ));
    assert!(matches!(
        Rule::parse("*", "topic:x", "publish", "maybe"),
        Err(RuleError::Effect(_))
    ));
    assert!(matches!(
        Rule::parse("*", "topic:a/b", "publish", "allow"),
        Err(RuleError::Name(_))
    ));
}

#[test]
fn rules_print_as_they_parse() {
    for parts in [
        ["User:alice", "topic:orders*", "publish", "allow"],
        ["*", "group:billing", "all", "deny"],
        ["Node:3", "cluster", "admin", "allow"],
        ["User:x", "audit", "audit-export", "allow"],
        ["*", "topic:*", "consume", "allow"],
    ] {
        let rule = rule(parts[0], parts[1], parts[2], parts[3]);
        assert_eq!(rule.to_string(), parts.join(" "));
    }
}

#[test]
fn the_index_agrees_with_a_scan_of_the_rules() {
    // Every rule of a small universe, checked against a direct evaluation.
    let principals = ["*", "alice", "bob"];
    let resources = [
        "topic:a", "topic:a*", "topic:ab", "topic:*", "group:a*", "cluster",
    ];
    let operations = ["publish", "consume", "all"];
    let mut rules = Vec::new();
    for (i, principal) in principals.iter().enumerate() {
        for (j, resource) in resources.iter().enumerate() {
            for (k, operation) in operations.iter().enumerate() {
                if (i + 2 * j + 3 * k) % 4 == 0 {
                    let effect = if (i + j + k) % 3 == 0 {
                        "deny"
                    } else {
                        "allow"
                    };
                    rules.push(rule(principal, resource, operation, effect));
                }
            }
        }
    }
    let security = security(&rules);
    for who in [
        Principal::user("alice"),
        Principal::user("bob"),
        Principal::user("carol"),
    ] {
        for resource in [
            Resource::Topic("a"),
            Resource::Topic("ab"),
            Resource::Topic("abc"),
            Resource::Topic("b"),
            Resource::Group("a"),
            Resource::Cluster,
            Resource::Audit,
        ] {
            for operation in Operation::ALL {
                let matching = rules.iter().filter(|rule| {
                    rule.principal.as_ref().is_none_or(|p| *p == who)
                        && rule.resource.matches(resource)
                        && rule.operation.is_none_or(|o| o == operation)
                });
                let effects: Vec<Effect> = matching.map(|rule| rule.effect).collect();
                let expected = !effects.contains(&Effect::Deny) && effects.contains(&Effect::Allow);
                let decided = security.check(&who, access(operation, resource)).is_ok();
                assert_eq!(decided, expected, "{who} {operation} {resource}");
            }
        }
    }
}
