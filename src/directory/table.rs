//! The directory table: its DDL, the migrations homeport applies to it on the directory primary
//! (version 2 adds the `shard` column of cells), and the statements the directory runs.
//!
//! ```sql
//! <table> (
//!   user_id     text PRIMARY KEY,
//!   home_region text NOT NULL,  -- the shard's region, kept for readers of the table
//!   shard       text,           -- NULL in rows written before cells: the region's default shard
//!   created_at  timestamptz NOT NULL DEFAULT now()
//! )
//! ```

/// The directory's statements for one configured table name (validated as `schema.table`).
pub struct Statements {
    pub select: String,
    /// The select for a table the migration has not reached yet (a replica of an old primary).
    pub select_legacy: String,
    /// Inserts unless the user exists; returns the row's region and shard, and whether it is new.
    pub insert: String,
    /// Users per shard, for `least-users` placement.
    pub count: String,
}

impl Statements {
    pub fn new(table: &str) -> Statements {
        Statements {
            select: format!("SELECT home_region, shard FROM {table} WHERE user_id = $1"),
            select_legacy: format!(
                "SELECT home_region, NULL::text FROM {table} WHERE user_id = $1"
            ),
            insert: format!(
                "WITH ins AS (INSERT INTO {table} (user_id, home_region, shard) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO NOTHING RETURNING home_region, shard) \
                 SELECT home_region, shard, true FROM ins UNION ALL \
                 SELECT home_region, shard, false FROM {table} \
                 WHERE user_id = $1 AND NOT EXISTS (SELECT 1 FROM ins)"
            ),
            // $2: the region whose shard-less rows count for this shard, or '' for none.
            count: format!(
                "SELECT count(*)::text FROM {table} \
                 WHERE shard = $1 OR (shard IS NULL AND home_region = $2)"
            ),
        }
    }
}

/// The directory table as of the latest migration, for operators and for `homeport dev`.
pub fn ddl(table: &str) -> String {
    let mut out = String::new();
    for (_, step) in migrations(table) {
        out.push_str(&step);
        out.push('\n');
    }
    out
}

/// The steps homeport applies to the directory primary, recorded as component `directory`.
pub fn migrations(table: &str) -> Vec<(i32, String)> {
    let schema = table.split('.').next().unwrap_or("homeport");
    vec![
        (
            1,
            format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};\n\
                 CREATE TABLE IF NOT EXISTS {table} (\n  \
                   user_id text PRIMARY KEY,\n  \
                   home_region text NOT NULL,\n  \
                   created_at timestamptz NOT NULL DEFAULT now()\n);"
            ),
        ),
        (
            2,
            format!(
                "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS shard text;\n\
                 CREATE INDEX IF NOT EXISTS {index}_shard ON {table} (shard);",
                index = table.replace('.', "_")
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_build_the_table_with_its_shard_column() {
        let ddl = ddl("homeport.directory");
        assert!(ddl.contains("CREATE TABLE IF NOT EXISTS homeport.directory"));
        assert!(ddl.contains("ADD COLUMN IF NOT EXISTS shard text"));
        assert!(ddl.contains("homeport_directory_shard ON homeport.directory (shard)"));
        let versions: Vec<i32> = migrations("s.t").iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, [1, 2]);
    }
}
