//! HTTP on the master's port: the dashboard's assets and its sign-in.

pub mod dashboard;
pub mod session;
