//! Read-your-writes: the consistency token codec (`token`). Routing reads by token and capturing
//! commit positions come with the rest of the consistency work.

pub mod token;
