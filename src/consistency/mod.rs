//! Read-your-writes: the consistency token codec (`token`) and the pure decision of which copies
//! may serve a read that carries one (`ryw`). Capturing commit positions and waiting for replicas
//! on the request paths come with the rest of the consistency work.

pub mod ryw;
pub mod staleness;
pub mod token;
