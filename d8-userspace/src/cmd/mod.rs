//! The commands: each one a configuration of the one pipeline in [`crate::trace`].
//!
//! - [`doctor`]: what this kernel allows, and which hook set a trace would use.
//! - [`cleanup`]: what a killed d8-trace left attached, removed.
//! - [`daemon`]: continuous capture on every node (DaemonSet), Prometheus metrics and JSON events.
//! - [`mcp`]: the same traces and explanations as tools for agents (Model Context Protocol).
//! - [`demo`]: a simulated node with an incident, traced live.

pub mod cleanup;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod mcp;
