//! Statements on a pooled connection in either of two ways, chosen per endpoint by its `pooler`
//! setting: prepared once per server connection and reused (a direct server), or sent as the
//! *unnamed* statement with Parse, Bind, Execute and Sync in one message (`pooler =
//! "transaction"`), so that nothing outlives the server transaction: through a transaction-mode
//! pooler the next transaction may run on another backend, where a named statement does not
//! exist, or is another client's (docs/fleet.md, "Behind a central pooler").
//!
//! homeport's own statements write their parameter types down ([`Own`]). A client's statement
//! over HTTP has its parameter types inferred by the server; behind a pooler they are learnt once
//! per sidecar and endpoint ([`Shapes`]) with a prepare that is closed inside a transaction of
//! its own, and the statement then runs unnamed with those types, as the prepared one would.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use deadpool_postgres::GenericClient;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Error, Row, RowStream, Statement};

/// A connection that can run an unnamed statement with given parameter types.
pub trait Unnamed: GenericClient + Sync {
    fn query_unnamed<'a>(
        &'a self,
        sql: &'a str,
        params: Vec<(&'a (dyn ToSql + Sync), Type)>,
    ) -> impl Future<Output = Result<RowStream, Error>> + Send + 'a;
}

impl Unnamed for deadpool_postgres::Object {
    fn query_unnamed<'a>(
        &'a self,
        sql: &'a str,
        params: Vec<(&'a (dyn ToSql + Sync), Type)>,
    ) -> impl Future<Output = Result<RowStream, Error>> + Send + 'a {
        self.query_typed_raw(sql, params)
    }
}

impl Unnamed for deadpool_postgres::Transaction<'_> {
    fn query_unnamed<'a>(
        &'a self,
        sql: &'a str,
        params: Vec<(&'a (dyn ToSql + Sync), Type)>,
    ) -> impl Future<Output = Result<RowStream, Error>> + Send + 'a {
        self.query_typed_raw(sql, params)
    }
}

/// One of homeport's own statements, ready to run on one connection.
pub enum Own<'a> {
    /// Prepared (cached per server connection).
    Prepared(Statement),
    /// Sent unnamed each time, with these parameter types.
    Unnamed(&'a str, &'a [Type]),
}

impl<'a> Own<'a> {
    /// `sql` with parameters of `types`: prepared on `client` unless `unnamed`. Sends nothing
    /// when unnamed or already prepared, so statements run right after are sent in order.
    pub async fn prepare<C: GenericClient>(
        client: &C,
        unnamed: bool,
        sql: &'a str,
        types: &'a [Type],
    ) -> Result<Own<'a>, Error> {
        if unnamed {
            return Ok(Own::Unnamed(sql, types));
        }
        client
            .prepare_typed_cached(sql, types)
            .await
            .map(Own::Prepared)
    }

    /// Runs the statement; nothing awaits before it is handed to the connection.
    pub async fn query<C: Unnamed>(
        &self,
        client: &C,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        use futures_util::TryStreamExt;
        match self {
            Own::Prepared(stmt) => client.query(stmt, params).await,
            Own::Unnamed(sql, types) => {
                let typed = params.iter().copied().zip(types.iter().cloned()).collect();
                client.query_unnamed(sql, typed).await?.try_collect().await
            }
        }
    }

    /// At most one row.
    pub async fn query_opt<C: Unnamed>(
        &self,
        client: &C,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        Ok(self.query(client, params).await?.into_iter().next())
    }
}

/// The server connections on which a set of statements is prepared under SQL names (`PREPARE`),
/// so a simple Query can `EXECUTE` them: the server plans them once per connection. A connection
/// is known by its statement cache, an `Arc` that lives exactly as long as the pooled
/// connection; a `Weak` to it also keeps its address from being reused while the entry exists.
#[derive(Default)]
pub struct SqlPrepared {
    on: Mutex<Vec<Connection>>,
}

/// A pooled connection, known by its statement cache.
type Connection = std::sync::Weak<deadpool_postgres::StatementCache>;

impl SqlPrepared {
    /// Whether `prepare` (one simple Query of `PREPARE`s) has run on `client`; runs it if not.
    /// `false` without sending anything when the connection is `unnamed` (behind a
    /// transaction-mode pooler the next transaction may be on another backend).
    pub async fn ensure(
        &self,
        client: &deadpool_postgres::Object,
        unnamed: bool,
        prepare: &str,
    ) -> Result<bool, Error> {
        if unnamed {
            return Ok(false);
        }
        let cache = &client.statement_cache;
        if self
            .lock()
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(cache)))
        {
            return Ok(true);
        }
        match client.batch_execute(prepare).await {
            Ok(()) => {}
            // Prepared by an earlier request whose answer was never read (it was cancelled).
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_PSTATEMENT) => {}
            Err(e) => return Err(e),
        }
        let mut on = self.lock();
        on.retain(|w| w.strong_count() > 0);
        on.push(Arc::downgrade(cache));
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.on.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the server said about a client's statement: its parameter types and result columns.
#[derive(Debug)]
pub struct Shape {
    pub params: Vec<Type>,
    pub columns: Vec<(String, Type)>,
}

impl Shape {
    fn of(stmt: &Statement) -> Shape {
        Shape {
            params: stmt.params().to_vec(),
            columns: stmt
                .columns()
                .iter()
                .map(|c| (c.name().to_string(), c.type_().clone()))
                .collect(),
        }
    }

    /// Types that are not built into PostgreSQL (enums, domains, composites, extensions):
    /// tokio-postgres looks them up with named statements it keeps per connection.
    pub fn custom_type(&self) -> Option<&Type> {
        self.params
            .iter()
            .chain(self.columns.iter().map(|(_, t)| t))
            .find(|t| Type::from_oid(t.oid()).is_none())
    }

    /// Whether a row's columns are the ones this shape promised (the schema may have changed).
    pub fn matches(&self, columns: &[tokio_postgres::Column]) -> bool {
        columns.len() == self.columns.len()
            && columns
                .iter()
                .zip(&self.columns)
                .all(|(c, (name, ty))| c.name() == name && c.type_() == ty)
    }
}

/// Statement shapes learnt on one endpoint behind a transaction-mode pooler, bounded: past
/// [`Shapes::CAPACITY`] the cache starts again (a client sending ever new SQL text costs a
/// describe per statement, never memory without end).
#[derive(Default)]
pub struct Shapes {
    cache: Mutex<HashMap<Arc<str>, Arc<Shape>>>,
}

/// How a statement's shape could not be learnt.
pub enum DescribeError {
    Server(Error),
    /// The statement uses a type that is not built in; the connection must be closed.
    Custom(String),
}

impl Shapes {
    pub const CAPACITY: usize = 2000;

    pub fn get(&self, sql: &str) -> Option<Arc<Shape>> {
        self.lock().get(sql).cloned()
    }

    /// Forgets a shape the server no longer agrees with.
    pub fn forget(&self, sql: &str) {
        self.lock().remove(sql);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Shape>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Learns `sql`'s shape on `client`: a prepare whose statement is closed before the
    /// transaction ends, inside the caller's transaction or (`in_transaction` false) a
    /// `BEGIN` ... `COMMIT` of its own, so the pooler keeps one backend throughout and the
    /// backend keeps nothing. A statement with a type that is not built in is refused after a
    /// `DEALLOCATE ALL` (tokio-postgres prepared its type lookups on this backend).
    pub async fn describe<C: GenericClient>(
        &self,
        client: &C,
        sql: &str,
        in_transaction: bool,
    ) -> Result<Arc<Shape>, DescribeError> {
        if let Some(shape) = self.get(sql) {
            return Ok(shape);
        }
        let prepared = if in_transaction {
            client.prepare(sql).await
        } else {
            let (begin, prepared) =
                tokio::join!(client.batch_execute("BEGIN"), client.prepare(sql));
            begin.map_err(DescribeError::Server)?;
            prepared
        };
        // The statement is dropped here, which queues its Close ahead of the COMMIT.
        let shape = prepared.map(|stmt| Shape::of(&stmt));
        let custom = shape
            .as_ref()
            .ok()
            .and_then(|s| s.custom_type().map(|t| t.name().to_string()));
        if custom.is_some() {
            client
                .batch_execute("DEALLOCATE ALL")
                .await
                .map_err(DescribeError::Server)?;
        }
        if !in_transaction {
            let end = if shape.is_ok() && custom.is_none() {
                "COMMIT"
            } else {
                "ROLLBACK"
            };
            client
                .batch_execute(end)
                .await
                .map_err(DescribeError::Server)?;
        }
        if let Some(name) = custom {
            return Err(DescribeError::Custom(name));
        }
        let shape = Arc::new(shape.map_err(DescribeError::Server)?);
        let mut cache = self.lock();
        if cache.len() >= Self::CAPACITY {
            cache.clear();
        }
        cache.insert(Arc::from(sql), shape.clone());
        Ok(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_types_are_found_among_params_and_columns() {
        let builtin = Shape {
            params: vec![Type::INT8, Type::TEXT_ARRAY],
            columns: vec![("j".into(), Type::JSONB)],
        };
        assert!(builtin.custom_type().is_none());
        let mood = Type::new(
            "mood".into(),
            90_001,
            tokio_postgres::types::Kind::Enum(vec!["ok".into()]),
            "public".into(),
        );
        let in_column = Shape {
            params: vec![Type::INT8],
            columns: vec![("m".into(), mood.clone())],
        };
        assert_eq!(in_column.custom_type().map(Type::name), Some("mood"));
        let in_param = Shape {
            params: vec![mood],
            columns: vec![],
        };
        assert_eq!(in_param.custom_type().map(Type::name), Some("mood"));
    }
}
