//! The regional Redis, as homeport uses it: a best-effort key-value store for caches and
//! advisory locks. Every call has a timeout, errors count as "Redis had nothing to say", and a
//! broken connection is dropped and re-made on the next call, so Redis being slow or down never
//! fails a request and never decides anything that PostgreSQL has not decided first.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, ConnectionInfo, IntoConnectionInfo};

use crate::config::RedisConfig;

pub struct Kv {
    client: Option<redis::Client>,
    conn: ArcSwapOption<MultiplexedConnection>,
    timeout: Duration,
}

impl Kv {
    pub fn new(config: &RedisConfig) -> Self {
        let client = connection_info(config)
            .and_then(redis::Client::open)
            .map_err(|e| tracing::warn!(error = %e, "redis URL rejected; running without Redis"))
            .ok();
        Kv {
            client,
            conn: ArcSwapOption::empty(),
            timeout: config.timeout,
        }
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

    /// Runs one command with the timeout; `None` (and a fresh connection next time) on failure.
    async fn call<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.connection().await?;
        match tokio::time::timeout(self.timeout, op(conn)).await {
            Ok(Ok(v)) => Some(v),
            _ => {
                self.conn.store(None);
                None
            }
        }
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        self.call(|mut c| async move { c.get::<_, Option<String>>(key).await })
            .await
            .flatten()
    }

    pub async fn set_ex(&self, key: &str, value: &str, ttl: Duration) {
        let secs = ttl.as_secs().max(1);
        self.call(|mut c| async move { c.set_ex::<_, _, ()>(key, value, secs).await })
            .await;
    }

    /// SET with a TTL in milliseconds (the key vanishes on Redis's clock, not ours).
    pub async fn set_px(&self, key: &str, value: &str, ttl: Duration) {
        let ms = (ttl.as_millis() as u64).max(1);
        self.call(|mut c| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await;
    }

    /// Runs a Lua script atomically in Redis (one round trip); `None` if Redis could not answer.
    pub async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &str,
        keys: &[&str],
        args: &[&str],
    ) -> Option<T> {
        self.call(|mut c| async move {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(script).arg(keys.len());
            for k in keys {
                cmd.arg(*k);
            }
            for a in args {
                cmd.arg(*a);
            }
            cmd.query_async::<T>(&mut c).await
        })
        .await
    }
}

/// The URL's connection settings with the configured password (`redis.password_file` or
/// `redis.password_env`), which the client sends with AUTH on every connection it opens.
fn connection_info(config: &RedisConfig) -> redis::RedisResult<ConnectionInfo> {
    let info = config.url.as_str().into_connection_info()?;
    Ok(match &config.password {
        Some(password) => {
            let settings = info.redis_settings().clone().set_password(password);
            info.set_redis_settings(settings)
        }
        None => info,
    })
}
