use super::*;

fn example() -> String {
    include_str!("../../config/eu.toml").replace("password_env = \"HOMEPORT_PG_PASSWORD\"\n", "")
}

fn err(text: &str) -> ConfigError {
    Config::parse(text).expect_err("config should be rejected")
}

#[test]
fn shipped_examples_parse() {
    let c = Config::parse(&example()).unwrap();
    assert_eq!(c.region.as_str(), "eu");
    assert_eq!(c.shards.len(), 2);
    assert_eq!(c.http.max_body, 1 << 20);
    assert_eq!(c.probe.interval, Duration::from_millis(500));
    let eu = c.shard(&ShardId::parse("eu").unwrap()).unwrap();
    assert_eq!(eu.primaries[0].region.as_str(), "eu");
    assert_eq!(eu.replicas[1].region.as_str(), "us");
    assert_eq!(eu.primaries[0].name, "pg-eu-primary.eu.internal:5432/app");
    let us_text = include_str!("../../config/us.toml")
        .replace("password_env = \"HOMEPORT_PG_PASSWORD\"\n", "");
    assert_eq!(Config::parse(&us_text).unwrap().region.as_str(), "us");
}

#[test]
fn two_primary_candidates_as_plain_urls_are_two_candidates() {
    let text = example().replace(
        "primary = [\"postgresql://pg-eu-primary.eu.internal:5432\"]",
        "primary = [\"postgresql://pg-eu-a.eu.internal:5432\", \"postgresql://pg-eu-b.eu.internal:5432\"]",
    );
    let c = Config::parse(&text).unwrap();
    let eu = c.shard(&ShardId::parse("eu").unwrap()).unwrap();
    assert_eq!(eu.primaries.len(), 2);
    assert_eq!(eu.primaries[1].name, "pg-eu-b.eu.internal:5432/app");
    assert_eq!(eu.primaries[1].region.as_str(), "eu");
}

#[test]
fn probe_url_sends_the_probe_past_the_pooler() {
    let text = example().replace(
        "primary = [\"postgresql://pg-eu-primary.eu.internal:5432\"]",
        "primary = [{ url = \"postgresql://pgbouncer.eu.internal:6432\", region = \"eu\", probe_url = \"postgresql://pg-eu-primary.eu.internal:5432\" }]",
    );
    let c = Config::parse(&text).unwrap();
    let eu = c.shard(&ShardId::parse("eu").unwrap()).unwrap();
    let e = &eu.primaries[0];
    assert_eq!(
        e.name, "pgbouncer.eu.internal:6432/app",
        "named after the data path"
    );
    let probe = e.probe_pg.as_ref().expect("a probe URL");
    assert_eq!(
        crate::config::endpoint_name(probe),
        "pg-eu-primary.eu.internal:5432/app"
    );
    assert!(eu.replicas.iter().all(|r| r.probe_pg.is_none()));
    let bad = example().replace(
        "primary = [\"postgresql://pg-eu-primary.eu.internal:5432\"]",
        "primary = [{ url = \"postgresql://a:6432\", region = \"eu\", probe_url = \"mysql://b\" }]",
    );
    assert_eq!(err(&bad).path, "shards.eu.primary[0].probe_url");
}

#[test]
fn pooler_mode_is_validated_per_endpoint() {
    let with = |mode: &str| {
        example().replace(
            "primary = [\"postgresql://pg-eu-primary.eu.internal:5432\"]",
            &format!("primary = [{{ url = \"postgresql://pgbouncer:6432\", region = \"eu\", pooler = \"{mode}\" }}]"),
        )
    };
    let c = Config::parse(&with("transaction")).unwrap();
    let eu = c.shard(&ShardId::parse("eu").unwrap()).unwrap();
    assert_eq!(eu.primaries[0].pooler, crate::config::Pooler::Transaction);
    assert!(
        eu.replicas
            .iter()
            .all(|r| r.pooler == crate::config::Pooler::None)
    );
    assert_eq!(
        Config::parse(&with("none")).unwrap().shards[0].primaries[0].pooler,
        crate::config::Pooler::None
    );
    for bad in ["session", "statement", "Transaction", ""] {
        let e = err(&with(bad));
        assert_eq!(e.path, "shards.eu.primary[0].pooler", "{bad}");
        assert!(e.message.contains("transaction"), "{bad}: {}", e.message);
    }
}

#[test]
fn unknown_key_is_reported_with_its_path() {
    let text = example().replace("[probe]\n", "[probe]\nintervall = \"1s\"\n");
    let e = err(&text);
    assert_eq!(e.path, "probe.intervall");
    assert!(e.message.contains("unknown field"), "{e}");
}

#[test]
fn unknown_key_inside_an_endpoint_is_reported_with_its_path() {
    let text = example().replace(
        "{ url = \"postgresql://pg-eu-replica.us.internal:5432\", region = \"us\" }",
        "{ url = \"postgresql://x:5432\", regoin = \"us\" }",
    );
    let e = err(&text);
    assert!(e.path.starts_with("shards.eu.replicas"), "{e}");
}

#[test]
fn bad_duration_names_the_key() {
    let e = err(&example().replace("interval = \"500ms\"", "interval = \"soon\""));
    assert_eq!(e.path, "probe.interval");
    assert!(e.message.contains("invalid duration"), "{e}");
}

#[test]
fn wrong_type_names_the_key() {
    let e = err(&example().replace("pool_size = 16", "pool_size = \"many\""));
    assert_eq!(e.path, "postgres.pool_size");
}

#[test]
fn unknown_replica_region_is_rejected() {
    let e = err(&example().replace(
        "region = \"us\" },\n]\n\n[shards.us]",
        "region = \"mars\" },\n]\n\n[shards.us]",
    ));
    assert_eq!(e.path, "shards.eu.replicas[1].region");
    assert!(e.message.contains("mars"), "{e}");
}

#[test]
fn own_region_must_exist() {
    let e = err(&example().replace("region = \"eu\"\n\n[http]", "region = \"ap\"\n\n[http]"));
    assert_eq!(e.path, "region");
}

#[test]
fn missing_secret_is_reported() {
    let text = example().replace(
        "[postgres]\n",
        "[postgres]\npassword_env = \"HOMEPORT_TEST_SURELY_UNSET_VAR\"\n",
    );
    let e = err(&text);
    assert_eq!(e.path, "postgres.password_env");
}

#[test]
fn jwt_mode_needs_keys() {
    let e = err(&example().replace("auth = \"trusted-header\"", "auth = \"jwt\""));
    assert_eq!(e.path, "jwt");
    let text = example().replace("auth = \"trusted-header\"", "auth = \"jwt\"")
        + "\n[jwt]\nalgorithm = \"none\"\n";
    assert_eq!(err(&text).path, "jwt.algorithm");
}

#[test]
fn bad_endpoint_url_is_rejected() {
    let e = err(&example().replace("postgresql://pg-us-primary.us.internal:5432", "mysql://x"));
    assert_eq!(e.path, "shards.us.primary[0]");
}

#[test]
fn syntax_error_is_one_line() {
    let e = err("region = \n");
    assert!(!e.to_string().contains('\n'));
}

#[test]
fn placement_must_be_known() {
    let e = err(&example().replace("placement = \"reject\"", "placement = \"random\""));
    assert_eq!(e.path, "directory.placement");
}

#[test]
fn rediss_is_refused_rather_than_silently_running_without_redis() {
    let e = err(&example().replace(
        "url = \"redis://redis.eu.internal:6379\"",
        "url = \"rediss://redis.eu.internal:6379\"",
    ));
    assert_eq!(e.path, "redis.url");
    assert!(e.message.contains("not supported"), "{e}");
    assert!(!e.to_string().contains('\n'), "one line: {e}");
}

#[test]
fn redis_password_in_the_url_and_a_file_is_refused() {
    let file = std::env::temp_dir().join(format!("homeport-redis-pw-{}", std::process::id()));
    std::fs::write(&file, "secret\n").unwrap();
    let e = err(&example().replace(
        "url = \"redis://redis.eu.internal:6379\"",
        &format!(
            "url = \"redis://:other@redis.eu.internal:6379\"\npassword_file = \"{}\"",
            file.display()
        ),
    ));
    let _ = std::fs::remove_file(&file);
    assert_eq!(e.path, "redis.password_file");
    let e = err(&example().replace(
        "url = \"redis://redis.eu.internal:6379\"",
        "url = \"redis://redis.eu.internal:notaport\"",
    ));
    assert_eq!(e.path, "redis.url");
}

#[test]
fn redis_passwords_do_not_show_in_debug_output() {
    let config = RedisConfig {
        url: "redis://:in-the-url@redis.eu.internal:6379".into(),
        password: Some("from-a-file".into()),
        timeout: Duration::from_millis(100),
    };
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("in-the-url") && !shown.contains("from-a-file"),
        "{shown}"
    );
    assert!(shown.contains("redis.eu.internal:6379"), "{shown}");
}

#[test]
fn ops_listener_defaults_to_loopback_7402() {
    let c = Config::parse(&example().replace("[ops]\nlisten = \"127.0.0.1:7402\"\n", "")).unwrap();
    assert_eq!(c.ops.listen.to_string(), "127.0.0.1:7402");
    let c = Config::parse(&example().replace("127.0.0.1:7402", "0.0.0.0:9402")).unwrap();
    assert_eq!(c.ops.listen.to_string(), "0.0.0.0:9402");
}

#[test]
fn ops_listener_must_be_an_address_of_its_own() {
    let e = err(&example().replace("127.0.0.1:7402", "ops.local:7402"));
    assert_eq!(e.path, "ops.listen");
    let e = err(&example().replace("127.0.0.1:7402", "127.0.0.1:7400"));
    assert_eq!(e.path, "ops.listen");
    assert!(e.message.contains("http.listen"), "{e}");
    // The wire endpoint on the ops port.
    let e = err(&(example() + "\n[pg]\nlisten = \"127.0.0.1:7402\"\n"));
    assert_eq!(e.path, "pg.listen");
    assert!(e.message.contains("ops.listen"), "{e}");
}

#[test]
fn trusted_header_on_a_network_data_listener_is_refused() {
    let text = example().replace("listen = \"127.0.0.1:7400\"", "listen = \"0.0.0.0:7400\"");
    let e = err(&text);
    assert_eq!(e.path, "http.listen");
    assert!(
        e.message
            .contains("http.allow_trusted_header_on_network = true"),
        "{e}"
    );
    assert!(!e.to_string().contains('\n'), "one line: {e}");
    // The pod IP or any other non-loopback address is refused the same way.
    let e = err(&example().replace("listen = \"127.0.0.1:7400\"", "listen = \"10.1.2.3:7400\""));
    assert_eq!(e.path, "http.listen");
}

#[test]
fn trusted_header_on_the_network_needs_the_explicit_flag() {
    let text = example()
        .replace("listen = \"127.0.0.1:7400\"", "listen = \"0.0.0.0:7400\"")
        .replace(
            "header_timeout = \"10s\"\n",
            "header_timeout = \"10s\"\nallow_trusted_header_on_network = true\n",
        );
    let c = Config::parse(&text).unwrap();
    assert_eq!(c.http.listen.to_string(), "0.0.0.0:7400");
    // IPv6 loopback is loopback: no flag needed.
    let c =
        Config::parse(&example().replace("listen = \"127.0.0.1:7400\"", "listen = \"[::1]:7400\""))
            .unwrap();
    assert!(c.http.listen.ip().is_loopback());
}

#[test]
fn jwt_auth_may_listen_on_the_network() {
    let dir = std::env::temp_dir().join(format!("homeport-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("jwt-secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
    let text = example()
        .replace("listen = \"127.0.0.1:7400\"", "listen = \"0.0.0.0:7400\"")
        .replace("auth = \"trusted-header\"", "auth = \"jwt\"")
        + &format!(
            "\n[jwt]\nalgorithm = \"HS256\"\nsecret_file = \"{}\"\n",
            secret.display()
        );
    let c = Config::parse(&text);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(c.unwrap().http.auth, AuthConfig::Jwt(_)));
}

#[test]
fn result_limits_have_defaults_and_refuse_zero() {
    let c = Config::parse(&example()).unwrap();
    assert_eq!(c.http.max_result_rows, 100_000);
    assert_eq!(c.http.max_result_bytes, 16 << 20);
    assert_eq!(c.http.result_budget, 64 << 20);
    let without = example()
        .replace("max_result_rows = 100000\n", "")
        .replace("max_result_bytes = \"16MiB\"\n", "")
        .replace("result_budget = \"64MiB\"\n", "");
    let d = Config::parse(&without).unwrap();
    assert_eq!(d.http.max_result_rows, DEFAULT_MAX_RESULT_ROWS);
    assert_eq!(d.http.result_budget as u64, DEFAULT_RESULT_BUDGET);
    for (from, to, path) in [
        (
            "max_result_rows = 100000",
            "max_result_rows = 0",
            "http.max_result_rows",
        ),
        (
            "max_result_bytes = \"16MiB\"",
            "max_result_bytes = 0",
            "http.max_result_bytes",
        ),
        (
            "result_budget = \"64MiB\"",
            "result_budget = \"0MiB\"",
            "http.result_budget",
        ),
    ] {
        assert_eq!(err(&example().replace(from, to)).path, path);
    }
}

/// The example config with shard eu resident in eu, and `extra` appended to `[shards.eu]`.
fn resident_eu(extra: &str) -> String {
    example().replace(
        "  { url = \"postgresql://pg-eu-replica.us.internal:5432\", region = \"us\" },\n]\n",
        &format!("]\nresidency = [\"eu\"]\n{extra}"),
    )
}

#[test]
fn resident_shard_with_copies_inside_is_accepted() {
    let c = Config::parse(&resident_eu("residency_policy = \"redirect\"\n")).unwrap();
    let eu = RegionName::parse("eu").unwrap();
    let eu_shard = ShardId::parse("eu").unwrap();
    let r = &c.residency.shards[&eu_shard];
    assert_eq!(r.regions, vec![eu.clone()]);
    assert_eq!(r.policy, crate::residency::Policy::Redirect);
    assert_eq!(
        c.residency.public_url(&eu),
        Some("https://eu.api.example.com")
    );
    // The default policy is forward; shards without residency are not listed.
    let c = Config::parse(&resident_eu("")).unwrap();
    assert_eq!(
        c.residency.shards[&eu_shard].policy,
        crate::residency::Policy::Forward
    );
    assert_eq!(c.residency.shards.len(), 1);
}

#[test]
fn replica_of_a_resident_shard_outside_its_residency_names_the_key() {
    let text = example().replace(
        "  { url = \"postgresql://pg-eu-replica.us.internal:5432\", region = \"us\" },\n]\n",
        "  { url = \"postgresql://pg-eu-replica.us.internal:5432\", region = \"us\" },\n]\nresidency = [\"eu\"]\n",
    );
    let e = err(&text);
    assert_eq!(e.path, "shards.eu.replicas[1].region");
    assert!(e.message.contains("outside the residency"), "{e}");
}

#[test]
fn residency_mistakes_name_their_keys() {
    let e = err(&resident_eu("residency_policy = \"bounce\"\n"));
    assert_eq!(e.path, "shards.eu.residency_policy");
    let e = err(&resident_eu("").replace("residency = [\"eu\"]", "residency = [\"us\"]"));
    assert_eq!(e.path, "shards.eu.residency");
    let e = err(&resident_eu("").replace("residency = [\"eu\"]", "residency = [\"eu\", \"mars\"]"));
    assert_eq!(e.path, "shards.eu.residency[1]");
    let e = err(&resident_eu("").replace("policy = \"forward\"", "policy = \"maybe\""));
    assert_eq!(e.path, "residency.policy");
    let e = err(&(example() + "\n[regions.mars]\npublic_url = \"https://mars.example\"\n"));
    assert_eq!(e.path, "regions.mars");
    let e = err(&example().replace(
        "public_url = \"https://us.api.example.com\"",
        "public_url = \"ftp://us.example\"",
    ));
    assert_eq!(e.path, "regions.us.public_url");
    let e = err(&example().replace(
        "[regions.eu]\npublic_url = \"https://eu.api.example.com\"",
        "[regions.eu]\npublic_url = \"https://other.example\"",
    ));
    assert_eq!(e.path, "regions.eu.public_url");
}

#[test]
fn directory_in_a_resident_shards_cluster_is_refused() {
    let text = resident_eu("").replace(
        "postgresql://pg-dir-primary.eu.internal:5432/homeport_directory",
        "postgresql://pg-eu-primary.eu.internal:5432/homeport_directory",
    );
    let e = err(&text);
    assert_eq!(e.path, "directory.primary[0]");
    assert!(e.message.contains("own cluster"), "{e}");
}

#[test]
fn placement_countries_are_checked() {
    let ok = example() + "\n[placement.countries]\nDE = [\"eu\"]\nUS = [\"us\", \"eu\"]\n";
    let c = Config::parse(&ok).unwrap();
    assert_eq!(c.directory.countries["US"].len(), 2);
    let e = err(&(example() + "\n[placement.countries]\nde = [\"eu\"]\n"));
    assert_eq!(e.path, "placement.countries.de");
    let e = err(&(example() + "\n[placement.countries]\nDE = [\"eu\", \"mars\"]\n"));
    assert_eq!(e.path, "placement.countries.DE[1]");
    let e = err(&(example() + "\n[placement.countries]\nDE = []\n"));
    assert_eq!(e.path, "placement.countries.DE");
}

#[test]
fn enum_values_are_checked_with_their_key_paths() {
    let cases = [
        (
            "placement = \"reject\"",
            "placement = \"random\"",
            "directory.placement",
        ),
        ("auth = \"trusted-header\"", "auth = \"basic\"", "http.auth"),
        (
            "primary_reads = \"nearest\"",
            "primary_reads = \"first\"",
            "routing.primary_reads",
        ),
    ];
    for (from, to, path) in cases {
        let e = err(&example().replace(from, to));
        assert_eq!(e.path, path, "{e}");
        assert!(e.message.contains("unknown variant"), "{e}");
    }
    for (setting, path) in [
        ("auth = \"md5\"", "pg.auth"),
        (
            "optimistic_transactions = \"maybe\"",
            "pg.optimistic_transactions",
        ),
    ] {
        let e = err(&(example() + &format!("\n[pg]\nlisten = \"127.0.0.1:7409\"\n{setting}\n")));
        assert_eq!(e.path, path, "{e}");
    }
    let ok = example()
        + "\n[pg]\nlisten = \"127.0.0.1:7409\"\noptimistic_transactions = \"off\"\nauth = \"trust\"\n";
    let pg = Config::parse(&ok).unwrap().pg.unwrap();
    assert!(!pg.optimistic_transactions);
    assert!(matches!(pg.auth, PgAuth::Trust));
    assert_eq!(pg.login_timeout, DEFAULT_LOGIN_TIMEOUT);
}

/// The example config with a second eu cell, `eu-2`, whose table ends with `extra`.
fn with_cell(extra: &str) -> String {
    example().replace(
        "[shards.us]\n",
        &format!(
            "[shards.eu-2]\nregion = \"eu\"\nprimary = [\"postgresql://pg-eu2-primary.eu.internal:5432\"]\n{extra}\n[shards.us]\n"
        ),
    )
}

#[test]
fn shards_default_to_their_own_region_and_cells_name_theirs() {
    let c = Config::parse(&with_cell("accepting = false\nweight = 3\n")).unwrap();
    let eu = c.shard(&ShardId::parse("eu").unwrap()).unwrap();
    assert_eq!(eu.region.as_str(), "eu");
    assert!(eu.accepting);
    assert_eq!(eu.weight, 1);
    let cell = c.shard(&ShardId::parse("eu-2").unwrap()).unwrap();
    assert_eq!(cell.region.as_str(), "eu");
    assert_eq!(cell.primaries[0].region.as_str(), "eu");
    assert!(!cell.accepting);
    assert_eq!(cell.weight, 3);
    let regions: Vec<String> = c.regions().iter().map(|r| r.to_string()).collect();
    assert_eq!(regions, ["eu", "us"], "a cell's name is not a region");
    assert_eq!(c.home_regions().len(), 2);
    assert_eq!(c.directory.within_region, WithinRegion::Hash);
}

#[test]
fn bad_cell_settings_name_their_key() {
    assert_eq!(err(&with_cell("weight = 0\n")).path, "shards.eu-2.weight");
    assert_eq!(
        err(&with_cell("").replace("[shards.eu-2]", "[shards.directory]")).path,
        "shards.directory"
    );
    assert_eq!(
        err(&with_cell("").replace("region = \"eu\"\nprimary", "region = \"EU\"\nprimary")).path,
        "shards.eu-2.region"
    );
    let text = with_cell("").replace(
        "[regions.eu]",
        "[placement]\nwithin_region = \"fullest\"\n\n[regions.eu]",
    );
    assert_eq!(err(&text).path, "placement.within_region");
    let text = with_cell("").replace(
        "[regions.eu]",
        "[placement]\nwithin_region = \"least-users\"\n\n[regions.eu]",
    );
    assert_eq!(
        Config::parse(&text).unwrap().directory.within_region,
        WithinRegion::LeastUsers
    );
}
