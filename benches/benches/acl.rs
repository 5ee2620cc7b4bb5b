//! What an access check costs per request, at the rule counts a large
//! cluster holds: 10,000 rules (the target is under 1 µs per
//! check) and 100,000 (the bound). The rules mix per-principal and
//! everyone rules, exact names and prefixes, allows and denies, and the
//! checks ask for names that match several of them.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

use sluice_model::security::{
    Access, Operation, Principal, Resource, Rule, Security, SecurityOp, Tenant,
};

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

/// `count` rules over 1,000 principals and topic families `t<k>.`: for
/// each rule an exact topic, a prefix, or a group, allow or deny.
fn security(count: usize) -> Security {
    let mut security = Security::default();
    for i in 0..count {
        let principal = format!("User:svc{}", i % 1_000);
        let (resource, operation, effect) = match i % 5 {
            0 => (format!("topic:t{}.orders", i % 2_000), "publish", "allow"),
            1 => (format!("topic:t{}.*", i % 2_000), "consume", "allow"),
            2 => (format!("group:g{}", i % 2_000), "consume", "allow"),
            3 => (format!("topic:t{}.secret", i % 2_000), "all", "deny"),
            _ => (format!("topic:t{}.audit*", i % 2_000), "consume", "deny"),
        };
        let rule = Rule::parse(&principal, &resource, operation, effect).expect("a valid rule");
        security
            .apply(&SecurityOp::AddRule(rule))
            .expect("within the bound");
    }
    let everyone = Rule::parse("*", "topic:public.*", "consume", "allow").expect("a valid rule");
    security
        .apply(&SecurityOp::AddRule(everyone))
        .expect("within the bound");
    security
        .apply(&SecurityOp::SetTenant(Tenant {
            name: "acme".into(),
            prefix: "acme.".into(),
        }))
        .expect("a valid tenant");
    security
        .apply(&SecurityOp::AssignTenant {
            principal: "svc7".into(),
            tenant: Some("acme".into()),
        })
        .expect("the tenant exists");
    security
}

fn checks(c: &mut Criterion) {
    let mut group = c.benchmark_group("acl_check");
    for count in [10_000, 100_000] {
        let security = security(count);
        let principal = Principal::user("svc5");
        let tenant_member = Principal::user("svc7");
        let allowed = Access {
            operation: Operation::Publish,
            resource: Resource::Topic("t5.orders"),
        };
        assert!(security.check(&principal, allowed).is_ok());
        let denied = Access {
            operation: Operation::Consume,
            resource: Resource::Topic("t5.audit.2026"),
        };
        assert!(security.check(&principal, denied).is_err());
        group.bench_function(BenchmarkId::new("allowed", count), |b| {
            b.iter(|| security.check(black_box(&principal), black_box(allowed)))
        });
        group.bench_function(BenchmarkId::new("denied_by_prefix", count), |b| {
            b.iter(|| security.check(black_box(&principal), black_box(denied)))
        });
        group.bench_function(BenchmarkId::new("outside_tenant", count), |b| {
            b.iter(|| security.check(black_box(&tenant_member), black_box(allowed)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = checks
}
criterion_main!(benches);
