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
                   "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}},
                            "template": {"metadata": {"labels": {"app": "d"}},
                                         "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
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

/// Bad input of every kind gets the right `Status` and changes nothing; two updates from the
/// same resourceVersion through different nodes: exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_status_and_concurrent_updates_conflict() {
    let cluster = TestCluster::start("apibad", 3, 3, &[]).await.unwrap();
    let http = HttpClient::default();
    let base = cluster.layout.api_url(0);
    let cms = format!("{base}/api/v1/namespaces/default/configmaps");
    let deploys = format!("{base}/apis/apps/v1/namespaces/default/deployments");
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

    let send = |ct: &'static str, url: String, body: Vec<u8>| {
        let http = http.clone();
        async move {
            http.request_as("POST", &url, ct, Some(body), T)
                .await
                .unwrap()
        }
    };
    // Malformed JSON, YAML and protobuf: 400 BadRequest.
    for (ct, body) in [
        ("application/json", b"{\"apiVersion\": ".to_vec()),
        ("application/yaml", b"metadata: [unclosed".to_vec()),
        (
            "application/vnd.kubernetes.protobuf",
            b"k8s\x00\x0a\xff\xff\xff\xff\x0f".to_vec(),
        ),
        (
            "application/vnd.kubernetes.protobuf",
            b"not an envelope".to_vec(),
        ),
    ] {
        let r = send(ct, cms.clone(), body).await;
        assert_eq!(r.status, 400, "{ct}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(status(&r)["reason"], "BadRequest");
    }
    // An unsupported media type: 415.
    let r = send("text/plain", cms.clone(), b"hello".to_vec()).await;
    assert_eq!(r.status, 415);
    assert_eq!(status(&r)["reason"], "UnsupportedMediaType");

    // Unknown fields: refused under Strict (with the field's path), dropped under Ignore.
    let typo = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "typo"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "t"}},
            "template": {"metadata": {"labels": {"app": "t"}},
                "spec": {"containers": [{"name": "c", "image": "busybox", "imagePullPolcy": "Never"}]}}}});
    let r = http
        .send_json(
            "POST",
            &format!("{deploys}?fieldValidation=Strict"),
            &typo,
            T,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let msg = status(&r)["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("unknown field \"spec.template.spec.containers[0].imagePullPolcy\""),
        "{msg}"
    );
    let r = http
        .send_json(
            "POST",
            &format!("{deploys}?fieldValidation=Ignore"),
            &typo,
            T,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let stored: Value = r.json().unwrap();
    assert!(
        stored
            .pointer("/spec/template/spec/containers/0/imagePullPolcy")
            .is_none(),
        "{stored}"
    );
    // A value of the wrong type: 400, whatever fieldValidation says.
    let mut wrong = typo.clone();
    wrong["metadata"]["name"] = json!("wrong");
    wrong["spec"]["replicas"] = json!("three");
    let r = http.send_json("POST", &deploys, &wrong, T).await.unwrap();
    assert_eq!(r.status, 400);
    assert!(
        status(&r)["message"]
            .as_str()
            .unwrap()
            .contains("spec.replicas"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    // Invalid names and labels: 422 Invalid with the field of each cause.
    let bad = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "Bad_Name", "labels": {"-bad-key": "ok", "good": "bad value!"}}});
    let r = http.send_json("POST", &cms, &bad, T).await.unwrap();
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let s = status(&r);
    assert_eq!(s["reason"], "Invalid");
    let fields: Vec<&str> = s["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"metadata.name"), "{s}");
    assert!(
        fields.iter().any(|f| f.starts_with("metadata.labels")),
        "{s}"
    );
    // A selector that does not match the template's labels.
    let mut mismatch = typo.clone();
    mismatch["metadata"]["name"] = json!("mismatch");
    mismatch["spec"]["selector"]["matchLabels"]["app"] = json!("other");
    let r = http
        .send_json("POST", &deploys, &mismatch, T)
        .await
        .unwrap();
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.body
            .windows(29)
            .any(|w| w == b"spec.template.metadata.labels"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // A malformed label selector on a list: 400.
    let r = http
        .request("GET", &format!("{cms}?labelSelector=a%20in%20(b"), None, T)
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    // Unknown resources and versions: 404 NotFound.
    for path in [
        "/api/v1/namespaces/default/widgets",
        "/apis/apps/v9/namespaces/default/deployments",
        "/apis/nope.example.com/v1/things",
    ] {
        let r = http
            .request("GET", &format!("{base}{path}"), None, T)
            .await
            .unwrap();
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(status(&r)["reason"], "NotFound", "{path}");
    }

    // Two updates from the same resourceVersion through two nodes: one 200, one 409.
    let r = http
        .send_json(
            "POST",
            &cms,
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "race"}, "data": {"v": "0"}}),
            T,
        )
        .await
        .unwrap();
    let created: Value = r.json().unwrap();
    let mut writes = Vec::new();
    for (node, value) in [(1, "a"), (2, "b")] {
        let mut obj = created.clone();
        obj["data"]["v"] = json!(value);
        let url = format!(
            "{}/api/v1/namespaces/default/configmaps/race",
            cluster.layout.api_url(node)
        );
        let http = http.clone();
        writes.push(tokio::spawn(async move {
            http.send_json("PUT", &url, &obj, T).await.unwrap()
        }));
    }
    let mut codes = Vec::new();
    for w in writes {
        let r = w.await.unwrap();
        if r.status == 409 {
            assert_eq!(status(&r)["reason"], "Conflict");
        }
        codes.push(r.status);
    }
    codes.sort();
    assert_eq!(codes, vec![200, 409]);

    // The node still serves.
    let r = http
        .request("GET", &format!("{base}/version"), None, T)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}
