//! kameo actors of a node: kubelet, service proxy, controller and scheduler shards.
//!
//! Not built yet: they arrive with the kubelet and controller issues and use `flotilla_api`.

pub use flotilla_api as api;

pub mod controllers;
pub mod image;
pub mod kubelet;
pub mod runtime;
#[cfg(test)]
mod testing;
