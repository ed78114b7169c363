//! The Kubernetes API over raw HTTP, for what kubectl does not exercise directly: every error is
//! a `Status` (oversized requests, bad query values, non-JSON bodies, failed DeleteOptions
//! preconditions, stale resourceVersions), deletecollection removes exactly the selected
//! objects, and the `status` subresource and the main resource each write only their part.

use std::time::Duration;

use flotilla_tests::TestCluster;
use flotilla_tests::flotilla_chaos::http::HttpClient;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(15);

fn status(resp: &flotilla_tests::flotilla_chaos::http::Response) -> Value {
    let v: Value = resp.json().unwrap();
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["code"], resp.status, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_status_objects_and_deletecollection_honours_selectors() {
    let cluster = TestCluster::start("apihttp", 3, 3, &[]).await.unwrap();
    let http = HttpClient::default();
    let base = cluster.layout.api_url(1);
    let cms = format!("{base}/api/v1/namespaces/default/configmaps");

    // The default namespace is created shortly after the leader is known.
    flotilla_tests::eventually(
        flotilla_tests::CONVERGE,
        "the default namespace",
        || async {
            let r = http
                .request("GET", &format!("{base}/api/v1/namespaces/default"), None, T)
                .await?;
            anyhow::ensure!(r.status == 200, "{}", r.status);
            Ok(())
        },
    )
    .await
    .unwrap();

    for (name, group) in [("a", "x"), ("b", "x"), ("c", "z")] {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"g": group}}});
        let r = http.send_json("POST", &cms, &body, T).await.unwrap();
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }

    // Oversized request: 413 as a Status, nothing stored.
    let huge = vec![b'a'; 4 * 1024 * 1024];
    let r = http.request("POST", &cms, Some(huge), T).await.unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(status(&r)["reason"], "RequestEntityTooLarge");

    // A malformed query value and a non-JSON body.
    let r = http
        .request(
            "GET",
            &format!("{cms}?watch=1&timeoutSeconds=soon"),
            None,
            T,
        )
        .await
        .unwrap();
    assert_eq!(status(&r)["reason"], "BadRequest");
    let r = http
        .request("POST", &cms, Some(b"{not json".to_vec()), T)
        .await
        .unwrap();
    assert_eq!(status(&r)["reason"], "BadRequest");

    // DeleteOptions preconditions.
    let c: Value = http.get_json(&format!("{cms}/c"), T).await.unwrap();
    let r = http
        .send_json(
            "DELETE",
            &format!("{cms}/c"),
            &json!({"preconditions": {"uid": "not-its-uid"}}),
            T,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 409);
    assert!(
        status(&r)["message"]
            .as_str()
            .unwrap()
            .contains("Precondition failed")
    );
    let r = http
        .send_json(
            "DELETE",
            &format!("{cms}/c"),
            &json!({"preconditions": {"uid": c["metadata"]["uid"]}}),
            T,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    // deletecollection with a label selector, through another node.
    let other = format!(
        "{}/api/v1/namespaces/default/configmaps",
        cluster.layout.api_url(2)
    );
    let r = http
        .request("DELETE", &format!("{other}?labelSelector=g%3Dx"), None, T)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let deleted: Value = r.json().unwrap();
    let names: Vec<&str> = deleted["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let left: Value = http.get_json(&cms, T).await.unwrap();
    assert_eq!(left["items"].as_array().unwrap().len(), 0, "{left}");

    // The status subresource writes only .status (no generation bump); the main resource
    // ignores .status for kinds that have the subresource.
    let deps = format!("{base}/apis/apps/v1/namespaces/default/deployments");
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                   "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}}}});
    assert_eq!(
        http.send_json("POST", &deps, &d, T).await.unwrap().status,
        201
    );
    let merge = |body: Value, url: String| {
        let http = http.clone();
        async move {
            http.request("PATCH", &url, Some(serde_json::to_vec(&body).unwrap()), T)
                .await
                .unwrap()
        }
    };
    // HttpClient sends application/json; PATCH needs a patch type, so this is refused...
    let r = merge(
        json!({"status": {"replicas": 2}}),
        format!("{deps}/d/status"),
    )
    .await;
    assert_eq!(r.status, 415);
    assert_eq!(status(&r)["reason"], "UnsupportedMediaType");
    // ...and PUT on /status replaces only the status.
    let mut current: Value = http.get_json(&format!("{deps}/d"), T).await.unwrap();
    current["status"] = json!({"replicas": 2});
    current["spec"]["replicas"] = json!(7);
    let r = http
        .send_json("PUT", &format!("{deps}/d/status"), &current, T)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let after: Value = http.get_json(&format!("{deps}/d"), T).await.unwrap();
    assert_eq!(after["status"]["replicas"], 2);
    assert_eq!(
        after["spec"]["replicas"], 1,
        "a status write must not change the spec"
    );
    assert_eq!(after["metadata"]["generation"], 1);
    let mut main = after.clone();
    main["status"] = json!({"replicas": 99});
    main["spec"]["replicas"] = json!(5);
    let r = http
        .send_json("PUT", &format!("{deps}/d"), &main, T)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let after: Value = http.get_json(&format!("{deps}/d"), T).await.unwrap();
    assert_eq!(
        after["status"]["replicas"], 2,
        "the main resource must not change the status"
    );
    assert_eq!(after["spec"]["replicas"], 5);
    assert_eq!(after["metadata"]["generation"], 2);
    // A stale resourceVersion is a conflict.
    let r = http
        .send_json("PUT", &format!("{deps}/d"), &main, T)
        .await
        .unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(status(&r)["reason"], "Conflict");

    cluster.stop().await.unwrap();
}
