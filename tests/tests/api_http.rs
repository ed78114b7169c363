//! The Kubernetes API over raw HTTP, for what kubectl does not exercise directly: every error is
//! a `Status` (oversized requests, bad query values, non-JSON bodies, failed DeleteOptions
//! preconditions), and deletecollection removes exactly the selected objects.

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

    cluster.stop().await.unwrap();
}
