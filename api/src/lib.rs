//! The Kubernetes object model and REST server.
//!
//! Not built yet: it arrives with the API issue (k8s-openapi types, defaulting, validation,
//! discovery, CRUD, patch, watch, tables) and sits on `flotilla_consensus::Store`.

pub use flotilla_consensus as store;
