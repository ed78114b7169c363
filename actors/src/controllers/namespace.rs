//! Namespaces: each active one gets its `default` ServiceAccount; a Terminating one is emptied
//! and then removed (the work itself is the API crate's `reconcile_namespace`, fenced here by
//! the namespace's shard lease).

use std::time::Duration;

use flotilla_api::ApiError;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::runner::{Ctx, Reconciler};

pub struct NamespaceController;

impl Reconciler for NamespaceController {
    fn name(&self) -> &'static str {
        "Namespace"
    }

    fn prefix(&self) -> &'static str {
        "/registry/core/namespaces/"
    }

    fn reconcile<'a>(
        &'a self,
        ctx: &'a Ctx,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Duration>, ApiError>> {
        async move {
            let Some(fence) = ctx.fence(key) else {
                return Ok(None);
            };
            let more = flotilla_api::reconcile_namespace(&ctx.store, key, &fence.compare).await?;
            // Emptying takes several passes (finalizers, pods stopping); look again soon.
            Ok(more.then_some(Duration::from_millis(500)))
        }
        .boxed()
    }
}
