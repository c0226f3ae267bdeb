//! The HTTP claim and record prepared once per server connection under SQL names, against a real
//! primary: the first keyed use prepares them, later uses send nothing more, a registry that does
//! not know a connection which already has them (an earlier answer was never read) accepts the
//! duplicate, nothing named is prepared behind a transaction-mode pooler, and the `EXECUTE`
//! forms claim, refuse and record as the whole texts do.

use std::time::Duration;

use crate::common::{options, start};
use homeport::db::statement::SqlPrepared;
use homeport::dev::superuser_url;
use homeport::idempotency::store;
use tokio_postgres::NoTls;

const NAMES: &str = "SELECT count(*) FROM pg_prepared_statements \
     WHERE name IN ('homeport_claim_v2', 'homeport_record_v2')";

async fn prepared_here(c: &deadpool_postgres::Object) -> i64 {
    c.query_one(NAMES, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_and_record_are_prepared_once_per_connection() {
    let env = start(options(&["eu"])).await;
    let url = superuser_url(env.primary_port("eu"), "app");
    let (mut direct, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    store::migrate(&mut direct).await.unwrap();
    let manager = deadpool_postgres::Manager::new(url.parse().unwrap(), NoTls);
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(1)
        .build()
        .unwrap();
    let c = pool.get().await.unwrap();

    let registry = SqlPrepared::default();
    assert!(
        !registry
            .ensure(&c, true, &store::PREPARE_SQL)
            .await
            .unwrap()
    );
    assert_eq!(prepared_here(&c).await, 0, "nothing named behind a pooler");
    assert!(
        registry
            .ensure(&c, false, &store::PREPARE_SQL)
            .await
            .unwrap()
    );
    assert_eq!(prepared_here(&c).await, 2);
    // Known now: nothing is sent (this text would fail if it were).
    assert!(registry.ensure(&c, false, "SELECT 1/0").await.unwrap());
    // A registry that never saw this connection meets the statements already there.
    let fresh = SqlPrepared::default();
    assert!(fresh.ensure(&c, false, &store::PREPARE_SQL).await.unwrap());
    // The same connection back from the pool is still known; a new one is not.
    drop(c);
    let c = pool.get().await.unwrap();
    assert!(registry.ensure(&c, false, "SELECT 1/0").await.unwrap());
    let _ = deadpool_postgres::Object::take(c);
    let c = pool.get().await.unwrap();
    assert_eq!(prepared_here(&c).await, 0, "a new server connection");
    assert!(registry.ensure(&c, false, "SELECT 1/0").await.is_err());
    assert!(
        registry
            .ensure(&c, false, &store::PREPARE_SQL)
            .await
            .unwrap()
    );

    // The EXECUTE forms: a claim and a record commit; the same key again is refused as completed
    // (HP200) and a different request with it as HP422.
    let ttl = Duration::from_secs(60);
    let (user, key, fp) = ("o'brien", "k\\1", [0xab_u8, 0x01]);
    c.batch_execute(&store::claim_batch(true, user, key, &fp))
        .await
        .unwrap();
    let record = store::record_batch(true, user, key, &fp, 200, r#"{"it's":1}"#, ttl);
    let answer = c.simple_query(&record).await.unwrap();
    assert!(answer.iter().any(|m| matches!(
        m,
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0).is_some_and(|l| l.contains('/'))
    )));
    let stored: (i16, String) = direct
        .query_one(
            "SELECT status, response FROM homeport.idempotency_keys WHERE user_id = $1 AND key = $2",
            &[&user, &key],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(stored, (200, r#"{"it's":1}"#.to_string()));
    for (fingerprint, code) in [(fp, "HP200"), ([0xcd, 0x02], "HP422")] {
        let e = c
            .batch_execute(&store::claim_batch(true, user, key, &fingerprint))
            .await
            .unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some(code), "{e}");
        c.batch_execute("ROLLBACK").await.unwrap();
    }
}
