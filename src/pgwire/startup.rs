//! What a client's StartupMessage may name, and what homeport reports back, as PostgreSQL would.
//!
//! A client names a role and a database. homeport serves one database on its servers under the
//! names in `pg.databases` (PgBouncer's `[databases]`), and the roles in `pg.users` (SCRAM) or the
//! role it logs in to the servers as (trust). Any other name is refused the way PostgreSQL
//! refuses it — `28000 role "x" does not exist`, `3D000 database "x" does not exist` — instead of
//! quietly serving the configured database under a name that does not exist. Pure functions.

use std::collections::{BTreeMap, BTreeSet};

use super::error::{ClientError, SqlState};

/// The role a client asks for: `28000` unless it is one homeport serves. With SCRAM the
/// exchange itself refuses unknown users (without saying which exist), so only trust checks here.
pub fn check_role(
    params: &[(String, String)],
    roles: &BTreeSet<String>,
    trust: bool,
) -> Result<(), ClientError> {
    let Some(user) = param(params, "user") else {
        return Err(ClientError::no_user(
            "no PostgreSQL user name specified in startup packet",
        ));
    };
    if trust && !roles.contains(user) {
        return Err(ClientError::no_user(format!(
            "role \"{user}\" does not exist"
        )));
    }
    Ok(())
}

/// The database a client asks for (its user name when it names none, as in PostgreSQL):
/// `3D000` unless `pg.databases` maps it to the servers' database.
pub fn check_database(
    params: &[(String, String)],
    databases: &BTreeMap<String, String>,
) -> Result<(), ClientError> {
    let name = param(params, "database")
        .filter(|d| !d.is_empty())
        .or_else(|| param(params, "user"))
        .unwrap_or_default();
    if databases.contains_key(name) {
        Ok(())
    } else {
        Err(ClientError::new(
            SqlState::INVALID_CATALOG_NAME,
            format!("database \"{name}\" does not exist"),
        ))
    }
}

/// The value homeport reports for a server parameter at startup. A homeport session can write
/// (writes go to a primary) even when its parameters came from a standby, so `in_hot_standby` is
/// `off`, as a primary reports it: libpq's `target_session_attrs=read-write|primary` accept the
/// session, `read-only|standby` refuse it, as they would a primary.
pub fn reported<'a>(name: &str, value: &'a str) -> &'a str {
    if name.eq_ignore_ascii_case("in_hot_standby") {
        "off"
    } else {
        value
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn roles_are_checked_under_trust_only() {
        let roles = BTreeSet::from(["app".to_string()]);
        assert_eq!(
            check_role(&params(&[("user", "app")]), &roles, true),
            Ok(())
        );
        let refused = check_role(&params(&[("user", "no_such_role")]), &roles, true);
        assert_eq!(
            refused,
            Err(ClientError::no_user("role \"no_such_role\" does not exist"))
        );
        assert_eq!(
            check_role(&params(&[("user", "no_such_role")]), &roles, false),
            Ok(())
        );
        assert_eq!(
            check_role(&params(&[]), &roles, true).unwrap_err().code,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        );
    }

    #[test]
    fn databases_map_or_are_refused() {
        let dbs = BTreeMap::from([
            ("app".to_string(), "app".to_string()),
            ("shop".to_string(), "app".to_string()),
        ]);
        for ok in [
            params(&[("user", "x"), ("database", "app")]),
            params(&[("user", "x"), ("database", "shop")]),
            params(&[("user", "app")]),
            params(&[("user", "app"), ("database", "")]),
        ] {
            assert_eq!(check_database(&ok, &dbs), Ok(()), "{ok:?}");
        }
        let refused = check_database(&params(&[("user", "app"), ("database", "nosuchdb")]), &dbs);
        assert_eq!(
            refused,
            Err(ClientError::new(
                SqlState::INVALID_CATALOG_NAME,
                "database \"nosuchdb\" does not exist"
            ))
        );
    }

    #[test]
    fn sessions_report_that_they_are_not_on_a_standby() {
        assert_eq!(reported("in_hot_standby", "on"), "off");
        assert_eq!(reported("TimeZone", "UTC"), "UTC");
    }
}
