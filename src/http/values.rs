//! JSON <-> PostgreSQL values for the HTTP API.
//!
//! Parameters are sent to the server in *text* format, so the server infers each parameter's type
//! from the statement and parses the value itself: `42` binds to int, numeric or text alike, and a
//! value the type cannot take is the server's clear `22P02`, never a silent coercion here.
//! Results arrive in binary format and are decoded by type OID: numbers stay numbers, `numeric`
//! becomes a string (no precision loss), json/jsonb are embedded, timestamps are ISO 8601, bytea
//! is base64, arrays nest.

use std::error::Error;
use std::fmt::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::BytesMut;
use serde_json::Value;
use tokio_postgres::types::{Format, IsNull, Kind, ToSql, Type, to_sql_checked};

/// A parameter value in PostgreSQL's text input syntax (`None` is SQL NULL).
#[derive(Debug, Clone, PartialEq)]
pub struct TextParam(pub Option<String>);

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(s) => {
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

/// Converts a JSON parameter into text input for a parameter of type `ty`.
pub fn param_to_text(value: &Value, ty: &Type) -> Result<TextParam, String> {
    if *ty == Type::JSON || *ty == Type::JSONB {
        return Ok(TextParam(match value {
            Value::Null => None,
            v => Some(v.to_string()),
        }));
    }
    Ok(TextParam(match value {
        Value::Null => None,
        Value::Array(items) => match ty.kind() {
            Kind::Array(elem) => Some(array_literal(items, elem)?),
            _ => return Err(format!("a JSON array cannot bind to type {}", ty.name())),
        },
        Value::Object(_) => {
            return Err(format!(
                "a JSON object can only bind to json or jsonb, not {}",
                ty.name()
            ));
        }
        other => Some(scalar_text(other, ty)?),
    }))
}

fn scalar_text(value: &Value, ty: &Type) -> Result<String, String> {
    Ok(match value {
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if *ty == Type::BYTEA => bytea_text(s)?,
        Value::String(s) => {
            if s.contains('\0') {
                return Err("strings cannot contain NUL characters".into());
            }
            s.clone()
        }
        Value::Null | Value::Array(_) | Value::Object(_) => unreachable!("handled by the caller"),
    })
}

/// bytea parameters are base64 (the same form results use) or PostgreSQL's `\x` hex form.
fn bytea_text(s: &str) -> Result<String, String> {
    if s.starts_with("\\x") {
        return Ok(s.to_string());
    }
    let bytes = B64
        .decode(s)
        .map_err(|_| "bytea values must be base64 (or \\x hex)".to_string())?;
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("\\x");
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    Ok(out)
}

/// A PostgreSQL array literal, e.g. `{"a","b\"c",NULL}`; nested JSON arrays are dimensions.
fn array_literal(items: &[Value], elem: &Type) -> Result<String, String> {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Value::Null => out.push_str("NULL"),
            Value::Array(inner) => out.push_str(&array_literal(inner, elem)?),
            // A json/jsonb element is JSON text, whatever its JSON type: "1" stays a string.
            _ if *elem == Type::JSON || *elem == Type::JSONB => {
                quote_into(&mut out, &item.to_string())
            }
            Value::Object(_) => {
                return Err(format!(
                    "a JSON object cannot be an element of {}[]",
                    elem.name()
                ));
            }
            other => quote_into(&mut out, &scalar_text(other, elem)?),
        }
    }
    out.push('}');
    Ok(out)
}

fn quote_into(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Decodes one binary-format result value of type `ty` into JSON.
pub fn decode(ty: &Type, raw: Option<&[u8]>) -> Value {
    match raw {
        None => Value::Null,
        Some(raw) => {
            decode_value(ty, raw).unwrap_or_else(|| Value::String(format!("\\x{}", hex(raw))))
        }
    }
}

fn decode_value(ty: &Type, raw: &[u8]) -> Option<Value> {
    let v = match *ty {
        Type::BOOL => Value::Bool(*raw.first()? != 0),
        Type::INT2 => Value::from(i16::from_be_bytes(raw.try_into().ok()?)),
        Type::INT4 => Value::from(i32::from_be_bytes(raw.try_into().ok()?)),
        Type::INT8 => Value::from(i64::from_be_bytes(raw.try_into().ok()?)),
        Type::OID | Type::XID | Type::CID => Value::from(u32::from_be_bytes(raw.try_into().ok()?)),
        Type::FLOAT4 => float(f64::from(f32::from_be_bytes(raw.try_into().ok()?))),
        Type::FLOAT8 => float(f64::from_be_bytes(raw.try_into().ok()?)),
        Type::NUMERIC => Value::String(numeric_text(raw)?),
        Type::TEXT
        | Type::VARCHAR
        | Type::BPCHAR
        | Type::NAME
        | Type::UNKNOWN
        | Type::XML
        | Type::CHAR => Value::String(std::str::from_utf8(raw).ok()?.to_string()),
        Type::UUID => Value::String(uuid_text(raw)?),
        Type::JSON => serde_json::from_slice(raw).ok()?,
        Type::JSONB => serde_json::from_slice(raw.strip_prefix(&[1])?).ok()?,
        Type::BYTEA => Value::String(B64.encode(raw)),
        Type::DATE => Value::String(super::time::date_text(i32::from_be_bytes(
            raw.try_into().ok()?,
        ))),
        Type::TIME => Value::String(super::time::time_text(i64::from_be_bytes(
            raw.try_into().ok()?,
        ))),
        Type::TIMETZ => Value::String(super::time::timetz_text(raw)?),
        Type::TIMESTAMP => Value::String(super::time::timestamp_text(
            i64::from_be_bytes(raw.try_into().ok()?),
            false,
        )),
        Type::TIMESTAMPTZ => Value::String(super::time::timestamp_text(
            i64::from_be_bytes(raw.try_into().ok()?),
            true,
        )),
        Type::INTERVAL => Value::String(super::time::interval_text(raw)?),
        Type::INET | Type::CIDR => Value::String(inet_text(raw)?),
        _ => match ty.kind() {
            Kind::Array(elem) => decode_array(elem, raw)?,
            Kind::Domain(base) => decode_value(base, raw)?,
            // Enum values travel as their label, and text-like extension types (citext, ltree's
            // text form) as UTF-8; anything else is shown as \x hex rather than guessed at.
            Kind::Enum(_) => Value::String(std::str::from_utf8(raw).ok()?.to_string()),
            _ if ty.name() == "citext" => Value::String(std::str::from_utf8(raw).ok()?.to_string()),
            _ => return None,
        },
    };
    Some(v)
}

fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or_else(|| {
            Value::String(if f.is_nan() {
                "NaN".into()
            } else if f > 0.0 {
                "Infinity".into()
            } else {
                "-Infinity".into()
            })
        })
}

fn hex(raw: &[u8]) -> String {
    raw.iter()
        .fold(String::with_capacity(raw.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn uuid_text(raw: &[u8]) -> Option<String> {
    if raw.len() != 16 {
        return None;
    }
    let h = hex(raw);
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn be_u16(raw: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(raw.get(at..at + 2)?.try_into().ok()?))
}

fn be_i32(raw: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(raw.get(at..at + 4)?.try_into().ok()?))
}

/// Binary `numeric`: ndigits, weight, sign, dscale, then base-10000 digits.
/// See `numeric_send` in PostgreSQL's src/backend/utils/adt/numeric.c.
pub fn numeric_text(raw: &[u8]) -> Option<String> {
    let ndigits = usize::from(be_u16(raw, 0)?);
    let weight = i32::from(be_u16(raw, 2)? as i16);
    let sign = be_u16(raw, 4)?;
    let dscale = usize::from(be_u16(raw, 6)?);
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| be_u16(raw, 8 + 2 * i))
        .collect::<Option<_>>()?;
    let digit = |k: i32| -> u16 {
        usize::try_from(k)
            .ok()
            .and_then(|k| digits.get(k).copied())
            .unwrap_or(0)
    };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for k in 0..=weight {
            if k == 0 {
                let _ = write!(s, "{}", digit(k));
            } else {
                let _ = write!(s, "{:04}", digit(k));
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut frac = String::with_capacity(dscale + 4);
        let mut k = weight + 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit(k));
            k += 1;
        }
        frac.truncate(dscale);
        s.push_str(&frac);
    }
    Some(s)
}

/// Binary inet/cidr: family, bits, is_cidr, address length, address bytes.
fn inet_text(raw: &[u8]) -> Option<String> {
    let (family, bits, len) = (*raw.first()?, *raw.get(1)?, usize::from(*raw.get(3)?));
    let addr = raw.get(4..4 + len)?;
    let (text, full) = match family {
        2 => (
            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(addr).ok()?).to_string(),
            32,
        ),
        3 => (
            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(addr).ok()?).to_string(),
            128,
        ),
        _ => return None,
    };
    Some(if bits == full && raw[2] == 0 {
        text
    } else {
        format!("{text}/{bits}")
    })
}

/// Binary arrays: ndim, has-nulls flag, element OID, (length, lower bound) per dimension, then
/// each element as a length-prefixed value (-1 for NULL). See `array_send` in arrayfuncs.c.
fn decode_array(elem: &Type, raw: &[u8]) -> Option<Value> {
    let ndim = usize::try_from(be_i32(raw, 0)?).ok()?;
    if ndim == 0 {
        return Some(Value::Array(Vec::new()));
    }
    if ndim > 6 {
        return None;
    }
    // A zero-length dimension is not something PostgreSQL sends (an empty array has no
    // dimensions); refusing it keeps the output bounded by the input.
    let dims: Vec<usize> = (0..ndim)
        .map(|d| {
            be_i32(raw, 12 + 8 * d)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n > 0)
        })
        .collect::<Option<_>>()?;
    let mut at = 12 + 8 * ndim;
    let total = dims.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d))?;
    if total > raw.len() {
        return None;
    }
    let mut flat = Vec::with_capacity(total);
    for _ in 0..total {
        let len = be_i32(raw, at)?;
        at += 4;
        if len < 0 {
            flat.push(Value::Null);
        } else {
            let len = usize::try_from(len).ok()?;
            flat.push(decode(elem, Some(raw.get(at..at + len)?)));
            at += len;
        }
    }
    Some(nest(&mut flat.into_iter(), &dims))
}

fn nest(flat: &mut impl Iterator<Item = Value>, dims: &[usize]) -> Value {
    match dims {
        [] => flat.next().unwrap_or(Value::Null),
        [n, rest @ ..] => Value::Array((0..*n).map(|_| nest(flat, rest)).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_become_text_input() {
        assert_eq!(
            param_to_text(&json!(42), &Type::INT4).unwrap().0.as_deref(),
            Some("42")
        );
        assert_eq!(
            param_to_text(&json!(true), &Type::BOOL)
                .unwrap()
                .0
                .as_deref(),
            Some("true")
        );
        assert_eq!(param_to_text(&json!(null), &Type::TEXT).unwrap().0, None);
        assert_eq!(
            param_to_text(&json!("x"), &Type::JSONB)
                .unwrap()
                .0
                .as_deref(),
            Some("\"x\"")
        );
        assert_eq!(
            param_to_text(&json!({"a": [1]}), &Type::JSON)
                .unwrap()
                .0
                .as_deref(),
            Some("{\"a\":[1]}")
        );
        assert_eq!(
            param_to_text(&json!("AQI="), &Type::BYTEA)
                .unwrap()
                .0
                .as_deref(),
            Some("\\x0102")
        );
        assert_eq!(
            param_to_text(&json!(["a\"b", null, "c\\d"]), &Type::TEXT_ARRAY)
                .unwrap()
                .0
                .as_deref(),
            Some("{\"a\\\"b\",NULL,\"c\\\\d\"}")
        );
        assert_eq!(
            param_to_text(&json!([[1, 2], [3, 4]]), &Type::INT4_ARRAY)
                .unwrap()
                .0
                .as_deref(),
            Some("{{\"1\",\"2\"},{\"3\",\"4\"}}")
        );
    }

    #[test]
    fn impossible_params_are_errors() {
        assert!(param_to_text(&json!({"a": 1}), &Type::TEXT).is_err());
        assert!(param_to_text(&json!([1]), &Type::INT4).is_err());
        assert!(param_to_text(&json!("not base64!"), &Type::BYTEA).is_err());
        assert!(param_to_text(&json!("a\u{0}b"), &Type::TEXT).is_err());
    }

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [ndigits, weight as u16, sign, dscale].iter().chain(digits) {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v
    }

    #[test]
    fn numeric_decodes_without_precision_loss() {
        assert_eq!(
            numeric_text(&numeric(2, 0, 0, 2, &[12, 3400])).unwrap(),
            "12.34"
        );
        assert_eq!(
            numeric_text(&numeric(3, 2, 0x4000, 0, &[1, 2, 3])).unwrap(),
            "-100020003"
        );
        assert_eq!(
            numeric_text(&numeric(1, -2, 0, 8, &[12])).unwrap(),
            "0.00000012"
        );
        assert_eq!(
            numeric_text(&numeric(1, -1, 0, 4, &[12])).unwrap(),
            "0.0012"
        );
        assert_eq!(numeric_text(&numeric(0, 0, 0, 0, &[])).unwrap(), "0");
        assert_eq!(numeric_text(&numeric(1, 0, 0, 3, &[7])).unwrap(), "7.000");
        assert_eq!(numeric_text(&numeric(0, 0, 0xC000, 0, &[])).unwrap(), "NaN");
        assert_eq!(numeric_text(&[0, 1]), None);
        assert_eq!(
            numeric_text(&numeric(5, 4, 0, 0, &[9999, 9999, 9999, 9999, 9999])).unwrap(),
            "99999999999999999999"
        );
    }

    #[test]
    fn scalars_decode() {
        assert_eq!(decode(&Type::INT8, Some(&(-5i64).to_be_bytes())), json!(-5));
        assert_eq!(decode(&Type::BOOL, Some(&[1])), json!(true));
        assert_eq!(
            decode(&Type::FLOAT8, Some(&f64::NAN.to_be_bytes())),
            json!("NaN")
        );
        assert_eq!(
            decode(&Type::JSONB, Some(b"\x01{\"a\":1}")),
            json!({"a": 1})
        );
        assert_eq!(decode(&Type::BYTEA, Some(&[1, 2])), json!("AQI="));
        assert_eq!(decode(&Type::TEXT, None), json!(null));
        assert_eq!(
            decode(&Type::UUID, Some(&[0xab; 16])),
            json!("abababab-abab-abab-abab-abababababab")
        );
        assert_eq!(
            decode(&Type::INET, Some(&[2, 32, 0, 4, 10, 0, 0, 1])),
            json!("10.0.0.1")
        );
        assert_eq!(
            decode(&Type::CIDR, Some(&[2, 8, 1, 4, 10, 0, 0, 0])),
            json!("10.0.0.0/8")
        );
        // A malformed value never panics: it is shown as hex.
        assert_eq!(decode(&Type::INT4, Some(&[1, 2])), json!("\\x0102"));
    }

    #[test]
    fn arrays_decode_with_nesting_and_nulls() {
        // int4[] '{{1,NULL},{3,4}}'
        let mut raw = Vec::new();
        for x in [2i32, 1, 23, 2, 1, 2, 1] {
            raw.extend_from_slice(&x.to_be_bytes());
        }
        for v in [Some(1i32), None, Some(3), Some(4)] {
            match v {
                Some(v) => {
                    raw.extend_from_slice(&4i32.to_be_bytes());
                    raw.extend_from_slice(&v.to_be_bytes());
                }
                None => raw.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        assert_eq!(
            decode(&Type::INT4_ARRAY, Some(&raw)),
            json!([[1, null], [3, 4]])
        );
        // A length prefix claiming more than the buffer holds is rejected, not trusted.
        let mut lying = raw.clone();
        lying[12..16].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode(&Type::INT4_ARRAY, Some(&lying)).is_string());
    }

    #[test]
    fn zero_length_array_dimensions_are_refused() {
        // ndim 2, no nulls, int4; dims [1000, 0]: would nest 1000 empty arrays from 28 bytes.
        let mut raw = Vec::new();
        for v in [2i32, 0, 23, 1000, 1, 0, 1] {
            raw.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(decode_array(&Type::INT4, &raw), None);
    }

    #[test]
    fn json_array_elements_keep_their_json_type() {
        let items = [json!("1"), json!(2), json!(true), json!({"a": "b"})];
        assert_eq!(
            array_literal(&items, &Type::JSONB).unwrap(),
            r#"{"\"1\"","2","true","{\"a\":\"b\"}"}"#
        );
    }
}
