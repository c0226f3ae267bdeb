//! A statement's result as JSON text, written row by row as the rows arrive, so a result is never
//! held twice (rows, then their JSON) and can be sent in pieces while it is being written.
//!
//! The object's members come in a fixed order, the same whether the body is sent at once or
//! streamed: `columns` and `rows` first, then what is only known after the last row:
//!
//! ```text
//! {"columns":[{"name":"id","type":"int8"}],"rows":[[1],[2]],"command":"SELECT","row_count":2}
//! ... "rows":[[1],[2]],"command":"SELECT","row_count":2,"truncated":true}   (request max_rows)
//! ... "rows":[[1],[2]],"error":{"type":"urn:homeport:problem:...","status":...}}   (cut short)
//! ```
//!
//! A body that ends with `error` instead of `command`/`row_count` was cut short after its status
//! line had been sent: the rows before it are real, the result is incomplete.

use std::error::Error;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Type};

use super::values::decode;

/// A result column as `{"name": ..., "type": ...}`.
#[derive(Debug, Serialize)]
struct Column<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    type_name: &'a str,
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

/// The JSON text of one result being written. Bytes already taken by [`ResultJson::take`] count
/// in [`ResultJson::written`] but are no longer held.
pub struct ResultJson {
    out: BytesMut,
    types: Vec<Type>,
    rows: u64,
    taken: usize,
}

impl ResultJson {
    /// Starts the object: `{"columns":[...],"rows":[`.
    pub fn begin<'c>(columns: impl IntoIterator<Item = (&'c str, &'c Type)>) -> ResultJson {
        let mut out = BytesMut::with_capacity(256);
        out.put_slice(b"{\"columns\":");
        let (cols, types): (Vec<Column>, Vec<Type>) = columns
            .into_iter()
            .map(|(name, ty)| {
                (
                    Column {
                        name,
                        type_name: ty.name(),
                    },
                    ty.clone(),
                )
            })
            .unzip();
        write_json(&mut out, &cols);
        out.put_slice(b",\"rows\":[");
        ResultJson {
            out,
            types,
            rows: 0,
            taken: 0,
        }
    }

    /// Appends one row as a JSON array.
    pub fn push_row(&mut self, row: &Row) -> Result<(), tokio_postgres::Error> {
        if self.rows > 0 {
            self.out.put_u8(b',');
        }
        self.out.put_u8(b'[');
        for (i, ty) in self.types.iter().enumerate() {
            if i > 0 {
                self.out.put_u8(b',');
            }
            let cell: RawCell = row.try_get(i)?;
            write_json(&mut self.out, &decode(ty, cell.0));
        }
        self.out.put_u8(b']');
        self.rows += 1;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes held now (not yet taken).
    pub fn held(&self) -> usize {
        self.out.len()
    }

    /// Bytes written since the start, taken or not.
    pub fn written(&self) -> usize {
        self.taken + self.out.len()
    }

    /// Closes the object after the last row.
    pub fn end(&mut self, command: &str, row_count: u64, truncated: bool) {
        self.out.put_slice(b"],\"command\":");
        write_json(&mut self.out, command);
        self.out.put_slice(b",\"row_count\":");
        self.out.put_slice(row_count.to_string().as_bytes());
        if truncated {
            self.out.put_slice(b",\"truncated\":true");
        }
        self.out.put_u8(b'}');
    }

    /// Closes the object of a result cut short: an `error` member (a problem object) instead of
    /// `command` and `row_count`.
    pub fn end_with_error(&mut self, problem: &Value) {
        self.out.put_slice(b"],\"error\":");
        write_json(&mut self.out, problem);
        self.out.put_u8(b'}');
    }

    /// Hands out what was written since the last call.
    pub fn take(&mut self) -> Bytes {
        self.taken += self.out.len();
        self.out.split().freeze()
    }
}

fn write_json<T: Serialize + ?Sized>(out: &mut BytesMut, value: &T) {
    // Writing to memory cannot fail, and these values always serialize.
    let _ = serde_json::to_writer(out.writer(), value);
}

/// `{"results":[<result>,...]}` from results that are JSON objects already.
pub fn results_object(results: &[Bytes]) -> Bytes {
    let len = results.iter().map(|r| r.len() + 1).sum::<usize>() + 14;
    let mut out = BytesMut::with_capacity(len);
    out.put_slice(b"{\"results\":[");
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(r);
    }
    out.put_slice(b"]}");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).expect("valid JSON")
    }

    #[test]
    fn an_empty_result_is_a_complete_object() {
        let mut r = ResultJson::begin(std::iter::empty());
        r.end("INSERT", 3, false);
        let v = parse(&r.take());
        assert_eq!(
            v,
            serde_json::json!({"columns": [], "rows": [], "command": "INSERT", "row_count": 3})
        );
    }

    #[test]
    fn truncated_and_cut_short_results_stay_valid_json() {
        let mut r = ResultJson::begin(std::iter::empty());
        r.end("SELECT", 0, true);
        assert_eq!(parse(&r.take())["truncated"], true);
        let mut r = ResultJson::begin(std::iter::empty());
        let first = r.take();
        r.end_with_error(&serde_json::json!({"status": 422}));
        let mut whole = first.to_vec();
        whole.extend_from_slice(&r.take());
        let v = parse(&whole);
        assert_eq!(v["error"]["status"], 422);
        assert!(v.get("row_count").is_none());
        assert_eq!(r.written(), whole.len());
    }

    #[test]
    fn results_are_wrapped_for_transactions() {
        let one = Bytes::from_static(b"{\"a\":1}");
        let v = parse(&results_object(&[one.clone(), one]));
        assert_eq!(v, serde_json::json!({"results": [{"a": 1}, {"a": 1}]}));
        assert_eq!(
            parse(&results_object(&[])),
            serde_json::json!({"results": []})
        );
    }
}
