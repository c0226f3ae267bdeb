//! The regional Redis directory cache. Strictly best effort: every call has a timeout, errors
//! count as misses, and a broken connection is dropped and re-made on the next call, so Redis
//! being slow or down never fails a request.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

use crate::config::RedisConfig;
use crate::types::{RegionName, UserId};

pub struct RedisCache {
    client: Option<redis::Client>,
    conn: ArcSwapOption<MultiplexedConnection>,
    timeout: Duration,
    ttl_secs: u64,
}

impl RedisCache {
    pub fn new(config: &RedisConfig, ttl: Duration) -> Self {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| tracing::warn!(error = %e, "redis URL rejected; running without the Redis cache"))
            .ok();
        RedisCache {
            client,
            conn: ArcSwapOption::empty(),
            timeout: config.timeout,
            ttl_secs: ttl.as_secs().max(1),
        }
    }

    fn key(user: &UserId) -> String {
        format!("homeport:dir:{}", user.as_str())
    }

    async fn connection(&self) -> Option<MultiplexedConnection> {
        if let Some(c) = self.conn.load_full() {
            return Some(MultiplexedConnection::clone(&c));
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = self
            .client
            .as_ref()?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .ok()?;
        self.conn.store(Some(Arc::new(conn.clone())));
        Some(conn)
    }

    pub async fn get(&self, user: &UserId) -> Option<String> {
        let mut conn = self.connection().await?;
        match tokio::time::timeout(self.timeout, conn.get::<_, Option<String>>(Self::key(user)))
            .await
        {
            Ok(Ok(v)) => v,
            _ => {
                self.conn.store(None);
                None
            }
        }
    }

    pub async fn set(&self, user: &UserId, region: &RegionName) {
        let Some(mut conn) = self.connection().await else {
            return;
        };
        let op = conn.set_ex::<_, _, ()>(Self::key(user), region.as_str(), self.ttl_secs);
        if !matches!(tokio::time::timeout(self.timeout, op).await, Ok(Ok(()))) {
            self.conn.store(None);
        }
    }
}
