//! The commands: each one a configuration of the one pipeline in [`crate::trace`].
//!
//! - [`doctor`]: what this kernel allows, and which hook set a trace would use.
//! - [`daemon`]: continuous capture on every node (DaemonSet), Prometheus metrics and JSON events.
//! - [`mcp`]: the same traces and explanations as tools for agents (Model Context Protocol).
//! - [`demo`]: a simulated node with an incident, traced live.

pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod mcp;
