//! Jobs and CronJobs on a 3-node cluster with real processes (the `process` runtime and the
//! busybox image from `scripts/build-busybox-image.sh`: a Job needs containers that exit),
//! driven by real kubectl: completions with bounded parallelism, a failing Job hitting its
//! backoffLimit, an Indexed Job running each index once, and a CronJob (Forbid) that starts a
//! Job at the minute, skips the next while it runs, and runs the missed time after it ends;
//! `kubectl create job --from=cronjob/…` works too.

use std::collections::BTreeSet;

use flotilla_tests::kubectl::{Kubectl, busybox_cluster};
use flotilla_tests::{CONVERGE, eventually};

fn job(name: &str, spec: &str, command: &str) -> String {
    format!(
        "apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
  {spec}
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox:1.36
        command: [sh, -c, '{command}']
"
    )
}

const CRON: &str = "apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: '* * * * *'
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          containers:
          - name: main
            image: busybox:1.36
            command: [sh, -c, 'sleep 75']
";

/// `name=phase=start=finish` per pod of job `job`.
async fn job_pods(k: &Kubectl, job: &str) -> Vec<(String, String, String, String)> {
    let (_, out, _) = k
        .run(
            0,
            &[
                "get",
                "pods",
                "-l",
                &format!("job-name={job}"),
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.status.phase}={.status.containerStatuses[0].state.terminated.startedAt}={.status.containerStatuses[0].state.terminated.finishedAt}{\"\\n\"}{end}",
            ],
            None,
        )
        .await;
    out.lines()
        .filter_map(|l| {
            let p: Vec<&str> = l.split('=').collect();
            (p.len() == 4).then(|| (p[0].into(), p[1].into(), p[2].into(), p[3].into()))
        })
        .collect()
}

async fn jsonpath(k: &Kubectl, kind_name: &str, path: &str) -> String {
    k.run(
        0,
        &["get", kind_name, "-o", &format!("jsonpath={path}")],
        None,
    )
    .await
    .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_fail_and_index_and_cron_jobs_start_them_on_schedule() {
    let Some((cluster, k)) = busybox_cluster("jobs", 3, &[]).await else {
        return;
    };

    // The CronJob first: its minute comes while the Jobs below run.
    k.ok(0, &["apply", "-f", "-"], Some(CRON)).await;

    // Five completions, two at a time.
    k.ok(
        1,
        &["apply", "-f", "-"],
        Some(&job("five", "completions: 5\n  parallelism: 2", "sleep 2")),
    )
    .await;
    let most_running = std::sync::atomic::AtomicUsize::new(0);
    eventually(CONVERGE * 3, "five completed", || async {
        let pods = job_pods(&k, "five").await;
        let running = pods
            .iter()
            .filter(|p| p.1 == "Running" || p.1 == "Pending")
            .count();
        most_running.fetch_max(running, std::sync::atomic::Ordering::Relaxed);
        assert!(running <= 2, "more than 2 pods at once: {pods:?}");
        let status = jsonpath(&k, "job/five", "{.status.succeeded}").await;
        anyhow::ensure!(status == "5", "succeeded {status}: {pods:?}");
        Ok(())
    })
    .await
    .unwrap();
    let most_running = most_running.into_inner();
    assert_eq!(most_running, 2, "parallelism 2 was never used");
    k.ok(
        0,
        &[
            "wait",
            "--for=condition=complete",
            "job/five",
            "--timeout=30s",
        ],
        None,
    )
    .await;
    let pods = job_pods(&k, "five").await;
    assert_eq!(pods.len(), 5, "{pods:?}");
    assert!(pods.iter().all(|p| p.1 == "Succeeded"), "{pods:?}");
    // Never more than two at once, by the containers' own start and finish times.
    for (name, _, start, _) in &pods {
        let overlapping = pods
            .iter()
            .filter(|(_, _, s, f)| s <= start && start < f)
            .count();
        assert!(
            overlapping <= 2,
            "{name} started among {overlapping}: {pods:?}"
        );
    }
    let out = k.ok(2, &["get", "job", "five"], None).await;
    assert!(out.contains("5/5"), "{out}");

    // A Job that always fails stops at its backoffLimit.
    k.ok(
        0,
        &["apply", "-f", "-"],
        Some(&job("doomed", "backoffLimit: 1", "exit 3")),
    )
    .await;
    k.ok(
        0,
        &[
            "wait",
            "--for=condition=failed",
            "job/doomed",
            "--timeout=120s",
        ],
        None,
    )
    .await;
    let reason = jsonpath(
        &k,
        "job/doomed",
        "{.status.conditions[?(@.type==\"Failed\")].reason}",
    )
    .await;
    assert_eq!(reason, "BackoffLimitExceeded");
    assert_eq!(jsonpath(&k, "job/doomed", "{.status.failed}").await, "2");
    let pods = job_pods(&k, "doomed").await;
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(pods.iter().all(|p| p.1 == "Failed"), "{pods:?}");

    // An Indexed Job: every index once, each pod knowing its index.
    k.ok(
        0,
        &["apply", "-f", "-"],
        Some(&job(
            "indexed",
            "completions: 3\n  parallelism: 3\n  completionMode: Indexed",
            "echo index=$JOB_COMPLETION_INDEX",
        )),
    )
    .await;
    k.ok(
        0,
        &[
            "wait",
            "--for=condition=complete",
            "job/indexed",
            "--timeout=120s",
        ],
        None,
    )
    .await;
    assert_eq!(
        jsonpath(&k, "job/indexed", "{.status.completedIndexes}").await,
        "0-2"
    );
    let (_, out, _) = k
        .run(
            0,
            &[
                "get",
                "pods",
                "-l",
                "job-name=indexed",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.metadata.labels.batch\\.kubernetes\\.io/job-completion-index}{\"\\n\"}{end}",
            ],
            None,
        )
        .await;
    let pods: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once(' ')).collect();
    let indexes: BTreeSet<&str> = pods.iter().map(|p| p.1).collect();
    assert_eq!(pods.len(), 3, "{out}");
    assert_eq!(indexes, ["0", "1", "2"].into_iter().collect(), "{out}");
    for (pod, index) in &pods {
        assert!(pod.starts_with(&format!("indexed-{index}-")), "{out}");
        let log = k.ok(0, &["logs", pod], None).await;
        assert_eq!(log.trim(), format!("index={index}"));
    }

    // Suspended: no pods and `Suspended`; resumed, it runs to completion.
    k.ok(
        0,
        &["apply", "-f", "-"],
        Some(&job("later", "suspend: true", "true")),
    )
    .await;
    k.ok(
        0,
        &[
            "wait",
            "--for=condition=suspended",
            "job/later",
            "--timeout=60s",
        ],
        None,
    )
    .await;
    assert!(job_pods(&k, "later").await.is_empty());
    k.ok(
        0,
        &[
            "patch",
            "job",
            "later",
            "-p",
            "{\"spec\":{\"suspend\":false}}",
        ],
        None,
    )
    .await;
    k.ok(
        0,
        &[
            "wait",
            "--for=condition=complete",
            "job/later",
            "--timeout=120s",
        ],
        None,
    )
    .await;
    // activeDeadlineSeconds ends a Job that runs too long, and its pod.
    k.ok(
        0,
        &["apply", "-f", "-"],
        Some(&job("slow", "activeDeadlineSeconds: 3", "sleep 600")),
    )
    .await;
    k.ok(
        0,
        &[
            "wait",
            "--for=condition=failed",
            "job/slow",
            "--timeout=120s",
        ],
        None,
    )
    .await;
    assert_eq!(
        jsonpath(
            &k,
            "job/slow",
            "{.status.conditions[?(@.type==\"Failed\")].reason}"
        )
        .await,
        "DeadlineExceeded"
    );
    eventually(CONVERGE, "the slow job's pod gone", || async {
        let pods = job_pods(&k, "slow").await;
        anyhow::ensure!(pods.iter().all(|p| p.1 != "Running"), "{pods:?}");
        Ok(())
    })
    .await
    .unwrap();
    // ttlSecondsAfterFinished: the finished Job and its pods are deleted.
    k.ok(
        0,
        &["apply", "-f", "-"],
        Some(&job("brief", "ttlSecondsAfterFinished: 2", "true")),
    )
    .await;
    eventually(
        CONVERGE * 2,
        "the brief job deleted with its pods",
        || async {
            let (ok, out, err) = k.run(0, &["get", "job", "brief"], None).await;
            anyhow::ensure!(!ok && err.contains("NotFound"), "{out}{err}");
            let pods = job_pods(&k, "brief").await;
            anyhow::ensure!(pods.is_empty(), "{pods:?}");
            Ok(())
        },
    )
    .await
    .unwrap();

    // The CronJob: a Job at the minute, named by it and owned by the CronJob. Forbid: the
    // next minute comes while that one still runs (75 s), so it waits, and runs when the
    // first has finished.
    let (first, second) = eventually(
        CONVERGE * 4,
        "two scheduled jobs, the first done",
        || async {
            let names = jsonpath(&k, "jobs", "{.items[*].metadata.name}").await;
            let mut ticks: Vec<u64> = names
                .split_whitespace()
                .filter_map(|n| n.strip_prefix("tick-"))
                .filter_map(|m| m.parse().ok())
                .collect();
            ticks.sort();
            anyhow::ensure!(ticks.len() == 2, "{names}");
            let done = jsonpath(&k, &format!("job/tick-{}", ticks[0]), "{.status.succeeded}").await;
            anyhow::ensure!(done == "1", "first job succeeded {done}");
            Ok((ticks[0], ticks[1]))
        },
    )
    .await
    .unwrap();
    assert_eq!(second, first + 1, "the skipped minute is the one run");
    let owner = jsonpath(
        &k,
        &format!("job/tick-{first}"),
        "{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
    )
    .await;
    assert_eq!(owner, "CronJob/tick");
    let finished = jsonpath(&k, &format!("job/tick-{first}"), "{.status.completionTime}").await;
    let started = jsonpath(
        &k,
        &format!("job/tick-{second}"),
        "{.metadata.creationTimestamp}",
    )
    .await;
    assert!(
        !finished.is_empty() && started >= finished,
        "second job created {started}, first finished {finished}"
    );
    let (_, events, _) = k
        .run(
            0,
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=tick",
                "-o",
                "jsonpath={.items[*].reason}",
            ],
            None,
        )
        .await;
    assert!(events.contains("JobAlreadyActive"), "{events}");
    let last = jsonpath(&k, "cronjob/tick", "{.status.lastScheduleTime}").await;
    assert_eq!(
        epoch_secs(&last),
        Some(second * 60),
        "lastScheduleTime {last}"
    );
    eventually(CONVERGE, "lastSuccessfulTime", || async {
        let success = jsonpath(&k, "cronjob/tick", "{.status.lastSuccessfulTime}").await;
        anyhow::ensure!(!success.is_empty(), "no lastSuccessfulTime");
        Ok(())
    })
    .await
    .unwrap();

    // A Job made by hand from the CronJob's template (kubectl builds it client-side).
    k.ok(
        0,
        &[
            "patch",
            "cronjob",
            "tick",
            "-p",
            "{\"spec\":{\"suspend\":true}}",
        ],
        None,
    )
    .await;
    k.ok(
        0,
        &["create", "job", "by-hand", "--from=cronjob/tick"],
        None,
    )
    .await;
    eventually(CONVERGE, "the hand-made job running", || async {
        let active = jsonpath(&k, "job/by-hand", "{.status.active}").await;
        anyhow::ensure!(active == "1", "active {active}");
        Ok(())
    })
    .await
    .unwrap();
    cluster.stop().await.unwrap();
}

/// Seconds since the epoch of an RFC 3339 UTC time.
fn epoch_secs(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// A Job's podFailurePolicy: a FailJob rule on exit code 42 fails the Job at its first pod
/// with reason PodFailurePolicy; an Ignore rule on exit code 3 lets a pod fail more often
/// than `backoffLimit: 0` allows while the Job keeps replacing it and never counts a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_failure_policy_fails_or_ignores_by_exit_code() {
    let Some((cluster, k)) = busybox_cluster("job-pfp", 1, &[]).await else {
        return;
    };
    let fail = job(
        "fatal",
        "backoffLimit: 6
  podFailurePolicy:
    rules:
    - action: FailJob
      onExitCodes: {containerName: main, operator: In, values: [42]}",
        "exit 42",
    );
    k.ok(0, &["apply", "-f", "-"], Some(&fail)).await;
    eventually(CONVERGE, "fatal Failed by the policy", || async {
        let got = jsonpath(
            &k,
            "job/fatal",
            "{.status.conditions[?(@.type==\"Failed\")].reason}|{.status.conditions[?(@.type==\"Failed\")].message}|{.status.failed}",
        )
        .await;
        anyhow::ensure!(got.starts_with("PodFailurePolicy|"), "{got}");
        Ok(got)
    })
    .await
    .map(|got| {
        let parts: Vec<&str> = got.split('|').collect();
        assert!(
            parts[1].starts_with("Container main for pod default/fatal-")
                && parts[1].ends_with("failed with exit code 42 matching FailJob rule at index 0"),
            "{got}"
        );
        assert_eq!(parts[2], "1", "{got}");
    })
    .unwrap();
    // It failed at the first pod: no second one was made.
    assert_eq!(job_pods(&k, "fatal").await.len(), 1);

    // Every pod fails with 3, which is ignored: with `backoffLimit: 0` one counted failure
    // would fail the Job, yet it keeps replacing its pods and counts nothing.
    let ignore = job(
        "flaky",
        "backoffLimit: 0
  podFailurePolicy:
    rules:
    - action: Ignore
      onExitCodes: {operator: In, values: [3]}",
        "exit 3",
    );
    k.ok(0, &["apply", "-f", "-"], Some(&ignore)).await;
    eventually(CONVERGE, "three ignored failures of flaky", || async {
        let failed = job_pods(&k, "flaky")
            .await
            .into_iter()
            .filter(|p| p.1 == "Failed")
            .count();
        anyhow::ensure!(failed >= 3, "{failed} failed pods");
        Ok(())
    })
    .await
    .unwrap();
    let got = jsonpath(
        &k,
        "job/flaky",
        "{.status.failed}|{.status.conditions[?(@.type==\"Failed\")].status}",
    )
    .await;
    assert!(
        got == "0|" || got == "|",
        "ignored failures are not counted: {got}"
    );
    drop(cluster);
}
