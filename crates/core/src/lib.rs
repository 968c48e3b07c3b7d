//! Lifeboat's pure core: the plan model, its loading and validation, failover decisions
//! (`decide`), retention and verification verdicts, WAL arithmetic, and the one error type every
//! room returns (`error`). Depends on no other Lifeboat crate. No I/O beyond reading the plan text the caller hands in, no async: every decision
//! here is a unit test away.

pub mod decide;
pub mod error;
pub mod load;
pub mod plan;
pub mod repo_url;
pub mod retention;
pub mod route;
pub mod schedule;
pub mod secret;
pub mod units;
pub mod validate;
pub mod verdict;
pub mod wal;

pub use error::{Error, Kind};
pub use load::{parse_plan, Diagnostic};
pub use plan::Plan;

/// `s` made fit for a part of a PostgreSQL name (a slot, a table): ASCII letters and digits
/// lower-cased, anything else `_`.
pub fn name_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The JSON Schema of `lifeboat.yaml`, for editors (`lifeboat plan schema`).
pub fn plan_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(plan::Plan);
    serde_json::to_value(schema).expect("schema serializes")
}

/// The commented starter plan `lifeboat init` writes.
pub const STARTER_PLAN: &str = include_str!("../templates/lifeboat.yaml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starter_plan_passes_check() {
        let plan = parse_plan(STARTER_PLAN, "lifeboat.yaml").unwrap_or_else(|d| {
            panic!(
                "{}",
                d.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
        assert_eq!(plan.name, "my-service");
        assert_eq!(plan.backups.len(), 2);
    }

    #[test]
    fn starter_plan_postgres_app_and_bucket_examples_pass_check_when_uncommented() {
        let uncommented: String = STARTER_PLAN
            .lines()
            .map(|l| {
                if ["  # db", "  # app", "  # uploads", "  #   "]
                    .iter()
                    .any(|p| l.starts_with(p))
                {
                    l.replacen("# ", "", 1)
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let plan = parse_plan(&uncommented, "lifeboat.yaml").unwrap_or_else(|d| {
            panic!(
                "{}\n{uncommented}",
                d.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
        assert_eq!(plan.services["db"].kind(), "postgres");
        assert_eq!(plan.services["app"].kind(), "http");
        assert_eq!(plan.services["uploads"].kind(), "bucket");
        assert!(plan.backups.contains_key("db-base"));
    }

    fn errors(src: &str) -> Vec<String> {
        parse_plan(src, "p.yaml")
            .expect_err("plan should fail")
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    const BASE: &str = "name: t\ntiers:\n  gold: { rpo: 15m, rto: 1h }\nservices:\n  etc:\n    kind: paths\n    tier: gold\n    paths: [/etc]\nrepositories:\n  main: { url: /tmp/r, key_env: K }\n";

    #[test]
    fn every_error_is_located_and_reported() {
        let src = format!(
            "{BASE}  other: {{ url: /tmp/o, key_env: K, colour: red }}\nbackups:\n  a:\n    service: nope\n    repository: main\n    retention: {{}}\n  b:\n    service: etc\n    repository: missing\n    schedule: \"0 2 * *\"\n  c:\n    service: etc\n    retention: {{ daily: many }}\n"
        );
        let e = errors(&src);
        let all = e.join("\n");
        assert!(
            all.contains("p.yaml:11:37: repositories.other.colour: unknown field `colour`"),
            "{all}"
        );
        assert!(
            all.contains("p.yaml:14:14: backups.a.service: job names undeclared service `nope`"),
            "{all}"
        );
        assert!(
            all.contains("p.yaml:16:16: backups.a.retention: retention has no keep rule"),
            "{all}"
        );
        assert!(
            all.contains(
                "p.yaml:19:17: backups.b.repository: job names undeclared repository `missing`"
            ),
            "{all}"
        );
        assert!(
            all.contains("backups.b.schedule: schedule `0 2 * *` has 4 fields"),
            "{all}"
        );
        assert!(
            all.contains("backups.c.retention.daily: invalid type: string \"many\", expected u32"),
            "{all}"
        );
        assert_eq!(e.len(), 6, "{all}");
    }

    #[test]
    fn undefined_tier_and_wrong_type() {
        let src = BASE
            .replace("tier: gold", "tier: silver")
            .replace("rpo: 15m", "rpo: soon");
        let all = errors(&src).join("\n");
        assert!(
            all.contains("p.yaml:3:16: tiers.gold.rpo: `soon` is not a duration"),
            "{all}"
        );
        assert!(
            all.contains(
                "p.yaml:7:11: services.etc.tier: tier `silver` is not defined (declared: gold)"
            ),
            "{all}"
        );
    }

    #[test]
    fn unknown_field_inside_tagged_service_points_at_key() {
        let src = BASE.replace(
            "    paths: [/etc]\n",
            "    paths: [/etc]\n    pathz: [/var]\n",
        );
        let all = errors(&src).join("\n");
        assert!(
            all.contains("p.yaml:9:5: services.etc.pathz: unknown field `pathz`"),
            "{all}"
        );
    }

    #[test]
    fn unknown_kind_and_malformed_yaml() {
        let src = BASE.replace("kind: paths", "kind: mysql");
        let all = errors(&src).join("\n");
        assert!(
            all.contains("p.yaml:6:11: services.etc.kind: unknown variant `mysql`"),
            "{all}"
        );
        let all = errors("name: x\nservices:\n  a: [1, 2\n").join("\n");
        assert!(all.contains("malformed YAML"), "{all}");
        assert!(all.starts_with("p.yaml:4:"), "{all}");
    }

    #[test]
    fn duplicate_keys_and_cycles() {
        let src = format!("{BASE}name: again\n");
        assert!(errors(&src).join("\n").contains("duplicate key `name`"));
        let src = BASE.replace(
            "    paths: [/etc]\n",
            "    paths: [/etc]\n    depends_on: [etc]\n",
        );
        assert!(errors(&src)
            .join("\n")
            .contains("dependency cycle: etc → etc"));
    }

    /// Hostile or careless input must be an error with a position, never a crash: an alias
    /// bomb used to exhaust memory and deep nesting overflowed the stack (both aborted).
    #[test]
    fn alias_bombs_and_deep_nesting_are_bounded_errors() {
        let mut bomb = format!("{BASE}x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!(
                "x{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let all = errors(&bomb).join("\n");
        assert!(all.contains("expands to more than"), "{all}");
        assert!(all.starts_with("p.yaml:1"), "{all}");

        let deep = format!("{BASE}x:\n{}", {
            let mut s = String::new();
            for i in 0..3000 {
                s.push_str(&" ".repeat(2 * (i + 1)));
                s.push_str("a:\n");
            }
            s
        });
        // In a thread with a small stack, as the binary's main thread would be for a deeper file.
        let all = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || errors(&deep).join("\n"))
            .unwrap()
            .join()
            .unwrap();
        assert!(all.contains("nested more than 64 levels deep"), "{all}");
        let flow = format!("{BASE}x: {}{}\n", "[".repeat(5000), "]".repeat(5000));
        let all = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || errors(&flow).join("\n"))
            .unwrap()
            .join()
            .unwrap();
        assert!(all.contains("nested more than 64 levels deep"), "{all}");
    }

    #[test]
    fn invalid_utf8_is_located() {
        let bytes = b"name: t\ntiers:\n  gold: { rpo: 15m, rto: 1h \xe9t\xe9 }\n";
        let d = crate::load::plan_text(bytes, "p.yaml").unwrap_err();
        assert_eq!((d[0].line, d[0].column), (3, 29), "{}", d[0]);
        assert!(
            d[0].to_string().contains("byte 0xe9 is not UTF-8"),
            "{}",
            d[0]
        );
        // Multi-byte characters before it count as one column each.
        let mut bytes = "name: ü".as_bytes().to_vec();
        bytes.push(0xff);
        let d = crate::load::plan_text(&bytes, "p.yaml").unwrap_err();
        assert_eq!((d[0].line, d[0].column), (1, 8), "{}", d[0]);
    }

    /// Values that used to be accepted and silently meant something else.
    #[test]
    fn values_that_would_be_silently_misread_are_refused() {
        let job = "backups:\n  j:\n    service: etc\n    repository: main\n    retention: { daily: 7, yearly: 2 }\n";
        let ok = format!("{BASE}{job}");
        parse_plan(&ok, "p.yaml").unwrap();
        for (from, to, want) in [
            (
                "rpo: 15m",
                "rpo: 188",
                "tiers.gold.rpo: `188` has no unit: write `188s`",
            ),
            (
                "rpo: 15m",
                "rpo: '188'",
                "tiers.gold.rpo: `188` has no unit",
            ),
            (
                "yearly: 2",
                "yearly: ~",
                "backups.j.retention.yearly: has no value",
            ),
            (
                "yearly: 2",
                "yearly: null",
                "backups.j.retention.yearly: has no value",
            ),
            (
                "yearly: 2",
                "yearly: !!binary Mg==",
                "the YAML tag `!!binary` is not supported",
            ),
            (
                "yearly: 2",
                "yearly: !custom 2",
                "the YAML tag `!custom` is not supported",
            ),
            (
                "repository: main",
                "repository: ~",
                "backups.j.repository: has no value",
            ),
            (
                "repository: main",
                "repository:",
                "backups.j.repository: has no value",
            ),
        ] {
            let src = ok.replace(from, to);
            let all = errors(&src).join("\n");
            assert!(all.contains(want), "{to}: {all}");
        }
        let src = format!("{ok}    verify: {{ max_age: '' }}\n");
        let all = errors(&src).join("\n");
        assert!(all.contains("backups.j.verify.max_age: empty"), "{all}");
        // Core tags that only confirm the type, and 0 without a unit, stay fine.
        let src = ok
            .replace("yearly: 2", "yearly: !!int 2")
            .replace("rpo: 15m", "rpo: 0");
        parse_plan(&src, "p.yaml").unwrap();
        // An empty top-level section is still allowed.
        parse_plan(&format!("{ok}notifications:\n"), "p.yaml").unwrap();
    }

    #[test]
    fn schema_describes_the_plan() {
        let s = plan_schema();
        let text = s.to_string();
        assert!(text.contains("\"repositories\""));
        assert!(text.contains("Recovery point objective"));
    }
}
