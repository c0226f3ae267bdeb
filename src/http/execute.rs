//! Running statements for the HTTP API on a pooled connection: prepare (cached per server
//! connection), bind the JSON parameters as text, stream the rows and encode them to JSON.

use std::error::Error;

use deadpool_postgres::GenericClient;
use futures_util::{TryStreamExt, pin_mut};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::{FromSql, Type};

use super::values::{TextParam, decode, param_to_text};
use crate::db::DbError;

/// The result of one statement, as the API returns it.
#[derive(Debug, Serialize)]
pub struct QueryResult {
    pub command: String,
    pub row_count: u64,
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Value>>,
}

/// A result column as `{"name": ..., "type": ...}`.
#[derive(Debug, Serialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
}

/// A result cell's raw binary bytes, decoded by [`decode`] according to the column type.
struct RawCell<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for RawCell<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(RawCell(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(RawCell(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Prepares and runs one statement. `command` is the tag from the classifier (tokio-postgres does
/// not expose the server's CommandComplete tag; for a single statement they agree).
pub async fn run<C: GenericClient>(
    client: &C,
    endpoint: &str,
    sql: &str,
    params: &[Value],
    command: &str,
) -> Result<QueryResult, DbError> {
    let stmt = client
        .prepare_cached(sql)
        .await
        .map_err(|e| DbError::from_pg(endpoint, e))?;
    run_prepared(client, endpoint, &stmt, params, command).await
}

/// Runs an already prepared statement. Nothing here awaits before the statement is handed to the
/// connection, so a query polled right after this one (to capture the commit position in the
/// same round trip) is sent after it.
pub async fn run_prepared<C: GenericClient>(
    client: &C,
    endpoint: &str,
    stmt: &tokio_postgres::Statement,
    params: &[Value],
    command: &str,
) -> Result<QueryResult, DbError> {
    let types = stmt.params();
    if types.len() != params.len() {
        return Err(DbError::Param {
            index: params.len().min(types.len()) + 1,
            message: format!(
                "the statement takes {} parameter(s), {} given",
                types.len(),
                params.len()
            ),
        });
    }
    let bound: Vec<TextParam> = params
        .iter()
        .zip(types)
        .enumerate()
        .map(|(i, (v, ty))| {
            param_to_text(v, ty).map_err(|message| DbError::Param {
                index: i + 1,
                message,
            })
        })
        .collect::<Result<_, _>>()?;

    let stream = client
        .query_raw(stmt, bound.iter())
        .await
        .map_err(|e| DbError::from_pg(endpoint, e))?;
    pin_mut!(stream);
    let columns = stmt.columns();
    let mut rows = Vec::new();
    while let Some(row) = stream
        .try_next()
        .await
        .map_err(|e| DbError::from_pg(endpoint, e))?
    {
        let mut out = Vec::with_capacity(columns.len());
        for (i, col) in columns.iter().enumerate() {
            let cell: RawCell = row.try_get(i).map_err(|e| DbError::from_pg(endpoint, e))?;
            out.push(decode(col.type_(), cell.0));
        }
        rows.push(out);
    }
    let row_count = stream.rows_affected().unwrap_or(rows.len() as u64);
    Ok(QueryResult {
        command: command.to_string(),
        row_count,
        columns: columns
            .iter()
            .map(|c| Column {
                name: c.name().to_string(),
                type_name: c.type_().name().to_string(),
            })
            .collect(),
        rows,
    })
}
