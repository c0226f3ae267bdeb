//! SQL text analysis without a database: a lexer that understands PostgreSQL's quoting rules and
//! a conservative classifier (read-only or not, command tag, sqlcommenter hints).

pub mod cache;
pub mod classify;
pub mod lexer;
pub mod session;
pub mod transaction;

pub use cache::ClassifyCache;
pub use classify::{Classification, RouteHint, TxnEffect, classify, classify_with};
pub use session::{SessionState, SettingNames};
pub use transaction::Begin;
