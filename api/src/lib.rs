//! The Kubernetes API of a node: resource table, `Status` errors, discovery and the generic
//! object endpoints over `flotilla_consensus::Store`.
//!
//! First slice of the API issue: objects are stored as JSON under
//! `/registry/<group>/<plural>/[<namespace>/]<name>` with `resourceVersion` = the key's
//! mod_revision; watches replay the store's history. Not here yet: typed validation and
//! defaulting (k8s-openapi), server-side apply, protobuf bodies, OpenAPI, subresources.

mod alloc;
mod apply;
mod defaults;
mod exec;
mod json_at;
mod lifecycle;
mod meta;
mod nodes;
mod openapi;
mod patch;
mod pb_schema;
pub mod pods;
pub mod protobuf;
mod resources;
mod server;
mod status;
mod table;
mod validate;
mod watch;

pub use json_at::At;
pub use lifecycle::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER, Propagation, reconcile_namespace};
pub use meta::{new_uid, parse_rfc3339, rfc3339};
pub use nodes::{NodeRegistration, PodCidr, register_node};
pub use resources::{RESOURCES, Resource};
pub use server::{
    DEFAULT_CLASS_ANNOTATION, DEFAULT_STORAGE_CLASS, LOCAL_PROVISIONER, MAX_OBJECT_BYTES,
    MAX_REQUEST_BYTES, ensure_default_namespaces, internal, router,
};
pub use status::ApiError;
