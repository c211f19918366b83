//! The wire protocol as Rust types: the only place method names are strings.

mod notification;

pub use notification::{Notification, ProblemNotice, Rescanned, ThreadChanged, ThreadRemoved};
