//! Read-your-writes and bounded staleness, pure: the consistency token codec (`token`), whether a
//! copy may serve a read that must see a position (`ryw`), the staleness bound (`staleness`), the
//! read plan both front ends drive (`plan`), and the SQL they send for it (`sql`).

pub mod plan;
pub mod ryw;
pub mod sql;
pub mod staleness;
pub mod token;
