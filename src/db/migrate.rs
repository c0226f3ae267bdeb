//! homeport's own schema changes, applied by homeport itself: each component (the idempotency
//! records in every shard primary, the directory table in the directory primary) has numbered
//! steps, recorded in `homeport.migrations` and applied once, in order, under an advisory lock so
//! that many sidecars starting at once do not race.

/// Applies the steps of `component` that the database lacks. Safe to run from many sidecars at
/// once.
pub async fn migrate<S: AsRef<str>>(
    client: &mut tokio_postgres::Client,
    component: &str,
    steps: &[(i32, S)],
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('homeport.migrations', 7401));
         CREATE SCHEMA IF NOT EXISTS homeport;
         CREATE TABLE IF NOT EXISTS homeport.migrations (
             component text NOT NULL, version integer NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, version))",
    )
    .await?;
    let done: Option<i32> = tx
        .query_one(
            "SELECT max(version) FROM homeport.migrations WHERE component = $1",
            &[&component],
        )
        .await?
        .get(0);
    for (version, sql) in steps.iter().filter(|(v, _)| *v > done.unwrap_or(0)) {
        tx.batch_execute(sql.as_ref()).await?;
        tx.execute(
            "INSERT INTO homeport.migrations (component, version) VALUES ($1, $2)",
            &[&component, version],
        )
        .await?;
        tracing::info!(component, version, "schema migrated");
    }
    tx.commit().await
}
