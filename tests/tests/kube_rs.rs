//! The watch semantics kube-rs clients rely on, with kube-rs itself as the client (TLS with
//! the cluster CA and the kubeconfig `flotilla up` writes): list, then watch from the list's
//! resourceVersion; resume from any resourceVersion the history still holds; bookmarks;
//! after compaction, `410 Expired` — and the relist that recovers from it.

use std::time::Duration;

use flotilla_tests::{CONVERGE, TestCluster, eventually};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

async fn client(cluster: &TestCluster, context: &str) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(cluster.kubeconfig_path()).unwrap();
    let options = KubeConfigOptions {
        context: Some(context.to_owned()),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn cm(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"suite": "watch"}},
        "data": {"v": value},
    }))
    .unwrap()
}

/// Collects watch events until `n` non-bookmark events arrived (or the deadline passes).
async fn collect(
    api: &Api<ConfigMap>,
    params: &WatchParams,
    rv: &str,
    n: usize,
) -> Vec<WatchEvent<ConfigMap>> {
    let mut stream = api.watch(params, rv).await.unwrap().boxed();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out
        .iter()
        .filter(|e| !matches!(e, WatchEvent::Bookmark(_)))
        .count()
        < n
    {
        match tokio::time::timeout_at(deadline, stream.try_next()).await {
            Ok(Ok(Some(e))) => out.push(e),
            _ => break,
        }
    }
    out
}

fn describe(e: &WatchEvent<ConfigMap>) -> String {
    match e {
        WatchEvent::Added(o) => format!("ADDED {}", o.metadata.name.clone().unwrap_or_default()),
        WatchEvent::Modified(o) => {
            format!("MODIFIED {}", o.metadata.name.clone().unwrap_or_default())
        }
        WatchEvent::Deleted(o) => {
            format!("DELETED {}", o.metadata.name.clone().unwrap_or_default())
        }
        WatchEvent::Bookmark(_) => "BOOKMARK".into(),
        WatchEvent::Error(s) => format!("ERROR {}", s.code),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_watch_resumes_bookmarks_and_relists_after_expiry() {
    let cluster = TestCluster::start("kubers", 3, 3, &[]).await.unwrap();
    let writer: Api<ConfigMap> = Api::namespaced(client(&cluster, "flotilla").await, "default");
    let reader: Api<ConfigMap> =
        Api::namespaced(client(&cluster, "flotilla-node-3").await, "default");
    eventually(CONVERGE, "the default namespace", || async {
        writer
            .create(&PostParams::default(), &cm("first", "0"))
            .await?;
        Ok(())
    })
    .await
    .unwrap();

    // List, then watch from the list's resourceVersion through another node.
    let list = reader
        .list(&ListParams::default().labels("suite=watch"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    let listed_rv = list.metadata.resource_version.clone().unwrap();
    writer
        .create(&PostParams::default(), &cm("second", "1"))
        .await
        .unwrap();
    let replaced = writer
        .replace("second", &PostParams::default(), &{
            let mut c = writer.get("second").await.unwrap();
            c.data = Some([("v".to_owned(), "2".to_owned())].into());
            c
        })
        .await
        .unwrap();
    let mid_rv = replaced.metadata.resource_version.clone().unwrap();
    writer.delete("first", &Default::default()).await.unwrap();

    let params = WatchParams::default().labels("suite=watch").timeout(10);
    let events: Vec<String> = collect(&reader, &params, &listed_rv, 3)
        .await
        .iter()
        .map(describe)
        .collect();
    assert_eq!(events, ["ADDED second", "MODIFIED second", "DELETED first"]);

    // Resume from the middle: only what came after.
    let events: Vec<String> = collect(&reader, &params, &mid_rv, 1)
        .await
        .iter()
        .map(describe)
        .collect();
    assert_eq!(events, ["DELETED first"]);

    // Bookmarks (kube-rs asks for them by default) arrive on an idle watch, at the latest when
    // it times out, carrying a resourceVersion to resume from.
    let bookmarked = WatchParams::default().labels("suite=watch").timeout(8);
    let mut stream = reader.watch(&bookmarked, &mid_rv).await.unwrap().boxed();
    let mut bookmark_rv = None;
    while let Ok(Ok(Some(e))) =
        tokio::time::timeout(Duration::from_secs(15), stream.try_next()).await
    {
        if let WatchEvent::Bookmark(b) = e {
            bookmark_rv = Some(b.metadata.resource_version);
            break;
        }
    }
    let bookmark_rv = bookmark_rv.expect("no bookmark on an idle watch");
    assert!(bookmark_rv.parse::<u64>().unwrap() >= mid_rv.parse::<u64>().unwrap());

    // Compact past the listed revision: a watch from it gets 410 Expired…
    for i in 0..3 {
        writer
            .create(&PostParams::default(), &cm(&format!("later-{i}"), "x"))
            .await
            .unwrap();
    }
    let now = writer.get("later-2").await.unwrap();
    let now_rv: u64 = now.metadata.resource_version.unwrap().parse().unwrap();
    cluster.client(0).compact(now_rv).await.unwrap();
    // (The compaction reaches each replica when it applies it.)
    eventually(
        CONVERGE,
        "410 Expired from a compacted revision",
        || async {
            let expired = collect(&reader, &params, &listed_rv, 1).await;
            anyhow::ensure!(
                matches!(expired.first(), Some(WatchEvent::Error(s)) if s.code == 410),
                "{:?}",
                expired.iter().map(describe).collect::<Vec<_>>()
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    // …and the client recovers the way informers do: relist, then watch from the new list.
    let relisted = reader
        .list(&ListParams::default().labels("suite=watch"))
        .await
        .unwrap();
    let names: Vec<String> = relisted
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    assert_eq!(names, ["later-0", "later-1", "later-2", "second"]);
    let rv = relisted.metadata.resource_version.unwrap();
    writer.delete("second", &Default::default()).await.unwrap();
    let events: Vec<String> = collect(&reader, &params, &rv, 1)
        .await
        .iter()
        .map(describe)
        .collect();
    assert_eq!(events, ["DELETED second"]);
}
