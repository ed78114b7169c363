//! Jobs (batch/v1): run pods from the template until `completions` of them succeed, at most
//! `parallelism` at once. Failed pods (and, under `restartPolicy: OnFailure`, container
//! restarts) count against `backoffLimit`; a replacement for a failed pod waits 10 s, doubling
//! per failure since the last success, up to 6 min. `activeDeadlineSeconds` bounds the run from
//! `startTime`. A finished Job has `Complete` or `Failed` (reason `BackoffLimitExceeded` or
//! `DeadlineExceeded`), its remaining pods are deleted, and with `ttlSecondsAfterFinished` it
//! is deleted that long after it finished, pods first. `suspend` deletes the active pods and
//! sets `Suspended`; resuming restarts the deadline clock.
//!
//! Indexed Jobs give each pod an index in `[0, completions)` (annotation, label, hostname and
//! `JOB_COMPLETION_INDEX`); an index completes once, and `completedIndexes` lists them.
//!
//! Without the job-tracking finalizer Kubernetes uses, counts come from the pods that exist;
//! `succeeded` and `failed` never go down, and `completedIndexes` is kept in the status, so
//! pods deleted after they were counted do not undo progress.

use flotilla_api::At;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_api::ApiError;
use flotilla_api::internal::{self, Fence};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::common::*;
use super::runner::{Ctx, Reconciler};

const MANAGER: &str = "job-controller";
const PREFIX: &str = "/registry/batch/jobs/";
/// The annotation and label with an Indexed Job pod's index.
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
/// The most pods one reconcile creates (the rest come on the next one).
const BURST: u64 = 500;
const FAILURE_BACKOFF_SECS: u64 = 10;
const MAX_FAILURE_BACKOFF_SECS: u64 = 360;

pub struct JobController;

fn u64_at(v: &Value, p: &str) -> Option<u64> {
    v.at(p).and_then(Value::as_u64)
}

fn index_of(pod: &Value) -> Option<u64> {
    pod.at("/metadata/annotations")
        .and_then(|a| a.get(INDEX_KEY))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

/// When a terminal pod finished: its last container's finish, else its creation.
fn finished_at(pod: &Value) -> u64 {
    let latest = pod
        .at("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.at("/state/terminated/finishedAt"))
        .filter_map(Value::as_str)
        .filter_map(flotilla_api::parse_rfc3339)
        .max();
    latest.unwrap_or_else(|| {
        flotilla_api::parse_rfc3339(str_at(pod, "/metadata/creationTimestamp")).unwrap_or(0)
    })
}

/// `0-2,4,6-7` from a set of indexes.
pub fn format_indexes(set: &BTreeSet<u64>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut run: Option<(u64, u64)> = None;
    for &i in set {
        run = match run {
            Some((a, b)) if b + 1 == i => Some((a, i)),
            Some((a, b)) => {
                parts.push(if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                });
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some((a, b)) = run {
        parts.push(if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        });
    }
    parts.join(",")
}

/// The indexes in `0-2,4`, below `limit` (a malformed part is skipped).
pub fn parse_indexes(s: &str, limit: u64) -> BTreeSet<u64> {
    let mut set = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u64>().ok(), b.parse::<u64>().ok()),
            None => (part.parse().ok(), part.parse().ok()),
        };
        if let (Some(a), Some(b)) = (a, b) {
            set.extend((a..=b.min(limit.saturating_sub(1))).take(100_000));
        }
    }
    set
}

/// What finishing a Job looks like.
struct Finish {
    condition: &'static str,
    reason: &'static str,
    message: String,
}

/// What a Job's `podFailurePolicy` says about one failed pod (`matchPodFailurePolicy`).
#[derive(Debug, PartialEq, Eq)]
enum PolicyAction {
    /// No rule matched, or a `Count` (or, without per-index limits, `FailIndex`) rule did:
    /// the failure counts against `backoffLimit`.
    Count,
    /// An `Ignore` rule matched: the pod is replaced and the failure not counted.
    Ignore,
    /// A `FailJob` rule matched: the Job fails at once with this message.
    FailJob(String),
}

/// The first rule of `policy` that matches the failed `pod`, as kube's job controller
/// (pkg/controller/job/pod_failure_policy.go) reads them.
fn pod_failure_action(policy: &Value, pod: &Value) -> PolicyAction {
    let rules = policy
        .get("rules")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let pod_name = format!(
        "{}/{}",
        str_at(pod, "/metadata/namespace"),
        str_at(pod, "/metadata/name")
    );
    for (index, rule) in rules.iter().enumerate() {
        let action = str_at(rule, "/action");
        let matched = if let Some(req) = rule.get("onExitCodes").filter(|r| r.is_object()) {
            exit_code_match(req, pod).map(|(container, code)| {
                format!(
                    "Container {container} for pod {pod_name} failed with exit code {code} matching {action} rule at index {index}"
                )
            })
        } else if let Some(patterns) = rule.get("onPodConditions").and_then(Value::as_array) {
            condition_match(patterns, pod).map(|kind| {
                format!(
                    "Pod {pod_name} has condition {kind} matching {action} rule at index {index}"
                )
            })
        } else {
            None
        };
        let Some(message) = matched else { continue };
        match action {
            "Ignore" => return PolicyAction::Ignore,
            "FailJob" => return PolicyAction::FailJob(message),
            "Count" | "FailIndex" => return PolicyAction::Count,
            // An action this version does not know: kube skips the rule.
            _ => continue,
        }
    }
    PolicyAction::Count
}

/// The first terminated container (regular ones, then init ones) with a non-zero exit code
/// that `req` (operator In/NotIn, values, optional containerName) matches.
fn exit_code_match(req: &Value, pod: &Value) -> Option<(String, i64)> {
    let values: Vec<i64> = req
        .get("values")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
        .collect();
    let only = req.get("containerName").and_then(Value::as_str);
    let operator = str_at(req, "/operator");
    ["/status/containerStatuses", "/status/initContainerStatuses"]
        .iter()
        .flat_map(|p| pod.at(p).and_then(Value::as_array).into_iter().flatten())
        .find_map(|c| {
            let code = c.at("/state/terminated/exitCode")?.as_i64()?;
            let name = str_at(c, "/name");
            if code == 0 || only.is_some_and(|o| o != name) {
                return None;
            }
            let listed = values.contains(&code);
            let hit = match operator {
                "In" => listed,
                "NotIn" => !listed,
                _ => false,
            };
            hit.then(|| (name.to_owned(), code))
        })
}

/// The first pod condition a pattern (`type`, `status` defaulting to True) matches.
fn condition_match(patterns: &[Value], pod: &Value) -> Option<String> {
    pod.at("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| {
            patterns.iter().any(|p| {
                let want = p.get("status").and_then(Value::as_str).unwrap_or("True");
                str_at(p, "/type") == str_at(c, "/type") && want == str_at(c, "/status")
            })
        })
        .map(|c| str_at(c, "/type").to_owned())
}

impl JobController {
    async fn sync(&self, ctx: &Ctx, key: &str) -> Result<Option<Duration>, ApiError> {
        let Some(fence) = ctx.fence(key) else {
            return Ok(None);
        };
        let Some(job) = ctx.get(&format!("{PREFIX}{key}")).await? else {
            return Ok(None);
        };
        if is_deleting(&job) {
            return Ok(None);
        }
        let ns = str_at(&job, "/metadata/namespace").to_owned();
        let uid = str_at(&job, "/metadata/uid").to_owned();
        let now = now_secs();
        let pods = owned_pods(ctx, &ns, &uid).await?;

        if let Some(done) = finish_time(&job) {
            return self.finished(ctx, &job, &pods, done, now, &fence).await;
        }

        let spec = job.get("spec").cloned().unwrap_or(json!({}));
        let indexed = str_at(&spec, "/completionMode") == "Indexed";
        let completions = u64_at(&spec, "/completions");
        let parallelism = u64_at(&spec, "/parallelism").unwrap_or(1);
        let backoff_limit = u64_at(&spec, "/backoffLimit").unwrap_or(6);
        let suspended = spec.get("suspend").and_then(Value::as_bool) == Some(true);
        let mut status = job.get("status").cloned().unwrap_or(json!({}));
        let mut conditions: Vec<Value> = status
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();

        let active: Vec<&Value> = pods.iter().filter(|p| is_active(p)).collect();
        let succeeded_pods: Vec<&Value> = pods
            .iter()
            .filter(|p| str_at(p, "/status/phase") == "Succeeded")
            .collect();
        // A pod that failed because it was deleted (suspend, surplus, a user) is not the
        // workload failing.
        let failed_all: Vec<&Value> = pods
            .iter()
            .filter(|p| str_at(p, "/status/phase") == "Failed" && !is_deleting(p))
            .collect();
        // The pod failure policy: ignored failures are neither counted nor backed off, and
        // the earliest failure a FailJob rule matches fails the Job.
        let policy = spec.get("podFailurePolicy").filter(|p| p.is_object());
        let mut fail_job: Option<(u64, String)> = None;
        let mut failed_pods: Vec<&Value> = Vec::new();
        for p in failed_all {
            match policy.map_or(PolicyAction::Count, |pol| pod_failure_action(pol, p)) {
                PolicyAction::Ignore => continue,
                PolicyAction::FailJob(message) => {
                    let at = finished_at(p);
                    if fail_job.as_ref().is_none_or(|(t, _)| at < *t) {
                        fail_job = Some((at, message));
                    }
                }
                PolicyAction::Count => {}
            }
            failed_pods.push(p);
        }
        let mut completed = BTreeSet::new();
        if indexed {
            let c = completions.unwrap_or(0);
            completed = parse_indexes(str_at(&status, "/completedIndexes"), c);
            completed.extend(
                succeeded_pods
                    .iter()
                    .filter_map(|p| index_of(p))
                    .filter(|i| *i < c),
            );
        }
        let succeeded = if indexed {
            completed.len() as u64
        } else {
            (succeeded_pods.len() as u64).max(u64_at(&status, "/succeeded").unwrap_or(0))
        };
        let failed = (failed_pods.len() as u64).max(u64_at(&status, "/failed").unwrap_or(0));
        // Under OnFailure the kubelet restarts failing containers in place; those count too.
        let restarts: u64 = if str_at(&spec, "/template/spec/restartPolicy") == "OnFailure" {
            active
                .iter()
                .flat_map(|p| {
                    p.at("/status/containerStatuses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .filter_map(|c| c.get("restartCount").and_then(Value::as_u64))
                .sum()
        } else {
            0
        };

        let mut requeue: Option<u64> = None;
        let mut removed: BTreeSet<String> = BTreeSet::new();
        let mut created = 0u64;
        if suspended {
            if set_condition(
                &mut conditions,
                "Suspended",
                "True",
                "JobSuspended",
                "Job suspended",
            ) {
                self.event(ctx, &job, "Normal", "Suspended", "Job suspended", &fence)
                    .await;
            }
            for p in &active {
                if delete_pod(&ctx.store, p, &fence).await? {
                    removed.insert(str_at(p, "/metadata/uid").to_owned());
                }
            }
        } else {
            if condition_true(&job, "Suspended") {
                set_condition(
                    &mut conditions,
                    "Suspended",
                    "False",
                    "JobResumed",
                    "Job resumed",
                );
                // The deadline counts from the resume.
                status["startTime"] = json!(now_string(now));
                self.event(ctx, &job, "Normal", "Resumed", "Job resumed", &fence)
                    .await;
            }
            if str_at(&status, "/startTime").is_empty() {
                status["startTime"] = json!(now_string(now));
            }
            let started = flotilla_api::parse_rfc3339(str_at(&status, "/startTime")).unwrap_or(now);
            let deadline = u64_at(&spec, "/activeDeadlineSeconds").map(|d| started + d);
            let complete = if indexed {
                completed.len() as u64 >= completions.unwrap_or(0)
            } else {
                match completions {
                    Some(c) => succeeded >= c,
                    None => succeeded > 0 && active.is_empty(),
                }
            };
            let finish = if let Some((_, message)) = fail_job {
                Some(Finish {
                    condition: "Failed",
                    reason: "PodFailurePolicy",
                    message,
                })
            } else if failed + restarts > backoff_limit {
                Some(Finish {
                    condition: "Failed",
                    reason: "BackoffLimitExceeded",
                    message: "Job has reached the specified backoff limit".into(),
                })
            } else if complete {
                Some(Finish {
                    condition: "Complete",
                    reason: "CompletionsReached",
                    message: "Reached expected number of succeeded pods".into(),
                })
            } else if deadline.is_some_and(|d| now >= d) {
                Some(Finish {
                    condition: "Failed",
                    reason: "DeadlineExceeded",
                    message: "Job was active longer than specified deadline".into(),
                })
            } else {
                None
            };
            if let Some(f) = finish {
                for p in &active {
                    if delete_pod(&ctx.store, p, &fence).await? {
                        removed.insert(str_at(p, "/metadata/uid").to_owned());
                    }
                }
                let target = if f.condition == "Complete" {
                    "SuccessCriteriaMet"
                } else {
                    "FailureTarget"
                };
                set_condition(&mut conditions, target, "True", f.reason, &f.message);
                set_condition(&mut conditions, f.condition, "True", f.reason, &f.message);
                if f.condition == "Complete" {
                    status["completionTime"] = json!(now_string(now));
                    self.event(ctx, &job, "Normal", "Completed", "Job completed", &fence)
                        .await;
                } else {
                    self.event(ctx, &job, "Warning", f.reason, &f.message, &fence)
                        .await;
                }
                if let Some(ttl) = u64_at(&spec, "/ttlSecondsAfterFinished") {
                    requeue = Some(ttl);
                }
            } else {
                // Replacements for failed pods wait, longer for each failure since the
                // last success.
                let last_success = succeeded_pods.iter().map(|p| finished_at(p)).max();
                let recent: Vec<u64> = failed_pods
                    .iter()
                    .map(|p| finished_at(p))
                    .filter(|t| last_success.is_none_or(|s| *t >= s))
                    .collect();
                let hold_until = recent.iter().max().map(|last| {
                    let n = recent.len().min(16) as u32;
                    last + (FAILURE_BACKOFF_SECS << (n - 1)).min(MAX_FAILURE_BACKOFF_SECS)
                });
                let may_create = hold_until.is_none_or(|h| now >= h);
                if let Some(h) = hold_until.filter(|_| !may_create) {
                    requeue = Some(h - now);
                }
                let (gone, made) = if indexed {
                    self.manage_indexed(
                        ctx,
                        &job,
                        &active,
                        &completed,
                        completions.unwrap_or(0),
                        parallelism,
                        may_create,
                        &fence,
                    )
                    .await?
                } else {
                    let want = match completions {
                        Some(c) => parallelism.min(c.saturating_sub(succeeded)),
                        // A work queue: once one pod succeeded, the rest finish on their own.
                        None if succeeded > 0 => active.len() as u64,
                        None => parallelism,
                    };
                    self.manage(ctx, &job, &active, want, may_create, &fence)
                        .await?
                };
                removed.extend(gone);
                created = made;
                if let Some(d) = deadline {
                    let left = d.saturating_sub(now).max(1);
                    requeue = Some(requeue.map_or(left, |r| r.min(left)));
                }
            }
        }

        let remaining: Vec<&&Value> = active
            .iter()
            .filter(|p| !removed.contains(str_at(p, "/metadata/uid")))
            .collect();
        status["active"] = json!(remaining.len() as u64 + created);
        status["ready"] = json!(remaining.iter().filter(|p| is_ready(p)).count());
        status["succeeded"] = json!(succeeded);
        status["failed"] = json!(failed);
        status["terminating"] = json!(
            pods.iter()
                .filter(|p| is_deleting(p)
                    && !matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed"))
                .count()
                + removed.len()
        );
        if indexed {
            status["completedIndexes"] = json!(format_indexes(&completed));
        }
        status["conditions"] = json!(conditions);
        if conditions.is_empty()
            && let Some(m) = status.as_object_mut()
        {
            m.remove("conditions");
        }
        if job.get("status") != Some(&status) {
            let mut updated = job.clone();
            updated["status"] = status;
            let written = internal::replace(
                &ctx.store,
                ("batch", "v1", "jobs"),
                Some(&ns),
                str_at(&job, "/metadata/name"),
                updated,
                true,
                MANAGER,
                fence,
            )
            .await?;
            if written.is_none() {
                // The Job changed under us: look again at once.
                return Ok(Some(Duration::from_millis(100)));
            }
        }
        Ok(requeue.map(Duration::from_secs))
    }

    /// A finished Job: stray pods go; with a TTL, the Job and its pods go when it runs out.
    async fn finished(
        &self,
        ctx: &Ctx,
        job: &Value,
        pods: &[Value],
        done: u64,
        now: u64,
        fence: &Fence,
    ) -> Result<Option<Duration>, ApiError> {
        for p in pods.iter().filter(|p| is_active(p)) {
            delete_pod(&ctx.store, p, fence).await?;
        }
        let Some(ttl) = u64_at(job, "/spec/ttlSecondsAfterFinished") else {
            return Ok(None);
        };
        let at = done.saturating_add(ttl);
        if now < at {
            return Ok(Some(Duration::from_secs(at - now)));
        }
        for p in pods.iter().filter(|p| !is_deleting(p)) {
            delete_pod(&ctx.store, p, fence).await?;
        }
        internal::delete(
            &ctx.store,
            ("batch", "v1", "jobs"),
            Some(str_at(job, "/metadata/namespace")),
            str_at(job, "/metadata/name"),
            Some(str_at(job, "/metadata/uid")),
            None,
            fence.clone(),
        )
        .await?;
        Ok(None)
    }

    /// Brings a NonIndexed Job to `want` active pods: (uids deleted, pods created).
    async fn manage(
        &self,
        ctx: &Ctx,
        job: &Value,
        active: &[&Value],
        want: u64,
        may_create: bool,
        fence: &Fence,
    ) -> Result<(Vec<String>, u64), ApiError> {
        let have = active.len() as u64;
        let mut removed = Vec::new();
        if have > want {
            let mut surplus = active.to_vec();
            // Not yet running and not ready go first, then the newest.
            surplus.sort_by_key(|p| {
                (
                    u8::from(str_at(p, "/status/phase") == "Running"),
                    u8::from(is_ready(p)),
                    std::cmp::Reverse(str_at(p, "/metadata/creationTimestamp").to_owned()),
                )
            });
            for p in surplus.iter().take((have - want) as usize) {
                if delete_pod(&ctx.store, p, fence).await? {
                    removed.push(str_at(p, "/metadata/uid").to_owned());
                }
            }
            return Ok((removed, 0));
        }
        if !may_create || have == want {
            return Ok((removed, 0));
        }
        let indexes = vec![None; (want - have).min(BURST) as usize];
        let made = self.create_pods(ctx, job, &indexes, fence).await;
        Ok((removed, made))
    }

    /// Brings an Indexed Job to one active pod per pending index, `parallelism` at most.
    #[allow(clippy::too_many_arguments)]
    async fn manage_indexed(
        &self,
        ctx: &Ctx,
        job: &Value,
        active: &[&Value],
        completed: &BTreeSet<u64>,
        completions: u64,
        parallelism: u64,
        may_create: bool,
        fence: &Fence,
    ) -> Result<(Vec<String>, u64), ApiError> {
        let mut removed = Vec::new();
        let mut by_index: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
        let mut extra: Vec<&Value> = Vec::new();
        for p in active {
            match index_of(p) {
                Some(i) if i < completions && !completed.contains(&i) => {
                    by_index.entry(i).or_default().push(p)
                }
                // Out of range, unreadable, or already completed by another pod.
                _ => extra.push(p),
            }
        }
        for pods in by_index.values_mut() {
            // One pod per index: keep the ready, then oldest.
            pods.sort_by_key(|p| {
                (
                    u8::from(!is_ready(p)),
                    str_at(p, "/metadata/creationTimestamp").to_owned(),
                )
            });
            extra.extend(pods.drain(1..));
        }
        let mut running = by_index.len() as u64;
        // Over parallelism: the highest indexes wait.
        let over: Vec<u64> = by_index
            .keys()
            .rev()
            .take(running.saturating_sub(parallelism) as usize)
            .copied()
            .collect();
        for i in over {
            if let Some(pods) = by_index.remove(&i) {
                extra.extend(pods);
                running -= 1;
            }
        }
        for p in extra {
            if delete_pod(&ctx.store, p, fence).await? {
                removed.push(str_at(p, "/metadata/uid").to_owned());
            }
        }
        if !may_create || running >= parallelism {
            return Ok((removed, 0));
        }
        let pending: Vec<Option<u64>> = (0..completions)
            .filter(|i| !completed.contains(i) && !by_index.contains_key(i))
            .take((parallelism - running).min(BURST) as usize)
            .map(Some)
            .collect();
        let made = self.create_pods(ctx, job, &pending, fence).await;
        Ok((removed, made))
    }

    /// Creates one pod per entry (an index for Indexed Jobs); stops at the first refusal,
    /// which is recorded. How many were created.
    async fn create_pods(
        &self,
        ctx: &Ctx,
        job: &Value,
        indexes: &[Option<u64>],
        fence: &Fence,
    ) -> u64 {
        let mut made = 0;
        for index in indexes {
            let pod = pod_for(job, *index);
            match internal::create(
                &ctx.store,
                ("", "v1", "pods"),
                Some(str_at(job, "/metadata/namespace")),
                pod,
                MANAGER,
                fence.clone(),
            )
            .await
            {
                Ok(p) => {
                    made += 1;
                    let msg = format!("Created pod: {}", str_at(&p, "/metadata/name"));
                    self.event(ctx, job, "Normal", "SuccessfulCreate", &msg, fence)
                        .await;
                }
                Err(e) => {
                    let msg = format!("Error creating: {}", e.message());
                    self.event(ctx, job, "Warning", "FailedCreate", &msg, fence)
                        .await;
                    break;
                }
            }
        }
        made
    }

    async fn event(
        &self,
        ctx: &Ctx,
        job: &Value,
        kind: &str,
        reason: &str,
        message: &str,
        fence: &Fence,
    ) {
        record(
            &ctx.store, job, "batch/v1", "Job", kind, reason, message, MANAGER, fence,
        )
        .await;
    }
}

fn now_string(secs: u64) -> String {
    flotilla_api::rfc3339(secs)
}

/// When the Job finished (its `Complete` or `Failed` condition), if it did.
fn finish_time(job: &Value) -> Option<u64> {
    job.at("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .filter(|c| {
            matches!(str_at(c, "/type"), "Complete" | "Failed") && str_at(c, "/status") == "True"
        })
        .map(|c| {
            flotilla_api::parse_rfc3339(str_at(job, "/status/completionTime"))
                .or_else(|| flotilla_api::parse_rfc3339(str_at(c, "/lastTransitionTime")))
                .unwrap_or(0)
        })
        .next()
}

/// A pod from the Job's template; Indexed pods carry their index.
fn pod_for(job: &Value, index: Option<u64>) -> Value {
    let name = str_at(job, "/metadata/name");
    let template = job.at("/spec/template").cloned().unwrap_or(json!({}));
    let mut labels = template
        .at("/metadata/labels")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    let mut annotations = template
        .at("/metadata/annotations")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
    let generate_name = match index {
        Some(i) => {
            labels[INDEX_KEY] = json!(i.to_string());
            annotations[INDEX_KEY] = json!(i.to_string());
            for list in ["containers", "initContainers"] {
                for c in spec
                    .get_mut(list)
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    let env = c
                        .as_object_mut()
                        .map(|o| o.entry("env").or_insert(json!([])));
                    if let Some(Value::Array(env)) = env
                        && !env
                            .iter()
                            .any(|e| str_at(e, "/name") == "JOB_COMPLETION_INDEX")
                    {
                        env.push(json!({
                            "name": "JOB_COMPLETION_INDEX",
                            "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                "fieldPath": format!("metadata.annotations['{INDEX_KEY}']")}},
                        }));
                    }
                }
            }
            if str_at(&spec, "/hostname").is_empty() {
                spec["hostname"] = json!(format!("{name}-{i}"));
            }
            format!("{name}-{i}-")
        }
        None => format!("{name}-"),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": generate_name,
            "namespace": str_at(job, "/metadata/namespace"),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_ref(job, "batch/v1", "Job")],
        },
        "spec": spec,
    })
}

impl Reconciler for JobController {
    fn name(&self) -> &'static str {
        "Job"
    }

    fn prefix(&self) -> &'static str {
        PREFIX
    }

    fn related(&self) -> &'static [&'static str] {
        &["/registry/core/pods/"]
    }

    fn keys_for(&self, pod: &Value) -> Vec<String> {
        owner_keys(pod, "Job")
    }

    fn reconcile<'a>(
        &'a self,
        ctx: &'a Ctx,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Duration>, ApiError>> {
        self.sync(ctx, key).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_failure_rules_match_exit_codes_and_conditions_in_order() {
        let pod = json!({"metadata": {"namespace": "default", "name": "j-abc"},
            "status": {"phase": "Failed",
                "conditions": [{"type": "DisruptionTarget", "status": "True"}],
                "containerStatuses": [
                    {"name": "side", "state": {"terminated": {"exitCode": 0}}},
                    {"name": "main", "state": {"terminated": {"exitCode": 42}}}]}});
        let policy = |rules: Value| json!({"rules": rules});
        assert_eq!(
            pod_failure_action(
                &policy(json!([{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}])),
                &pod
            ),
            PolicyAction::FailJob(
                "Container main for pod default/j-abc failed with exit code 42 matching FailJob rule at index 0".into()
            )
        );
        // The first matching rule wins; a containerName that does not match skips the rule.
        assert_eq!(
            pod_failure_action(
                &policy(json!([
                    {"action": "FailJob", "onExitCodes": {"containerName": "side", "operator": "In", "values": [42]}},
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                    {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [1]}}])),
                &pod
            ),
            PolicyAction::Ignore
        );
        assert_eq!(
            pod_failure_action(
                &policy(
                    json!([{"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [42]}}])
                ),
                &pod
            ),
            PolicyAction::Count
        );
        assert_eq!(
            pod_failure_action(
                &policy(
                    json!([{"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}])
                ),
                &pod
            ),
            PolicyAction::FailJob(
                "Pod default/j-abc has condition DisruptionTarget matching FailJob rule at index 0"
                    .into()
            )
        );
    }

    #[test]
    fn completed_indexes_round_trip() {
        let set: BTreeSet<u64> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7", 10), set);
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        // Beyond completions and malformed parts are dropped.
        assert_eq!(parse_indexes("1,x,3-9", 5), [1, 3, 4].into_iter().collect());
    }

    #[test]
    fn indexed_pods_carry_their_index() {
        let job = json!({
            "metadata": {"name": "work", "namespace": "default", "uid": "u1"},
            "spec": {"template": {"metadata": {"labels": {"job-name": "work"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        });
        let pod = pod_for(&job, Some(3));
        assert_eq!(pod["metadata"]["generateName"], "work-3-");
        assert_eq!(pod["metadata"]["labels"][INDEX_KEY], "3");
        assert_eq!(pod["metadata"]["labels"]["job-name"], "work");
        assert_eq!(pod["metadata"]["annotations"][INDEX_KEY], "3");
        assert_eq!(pod["spec"]["hostname"], "work-3");
        assert_eq!(
            pod["spec"]["containers"][0]["env"][0]["name"],
            "JOB_COMPLETION_INDEX"
        );
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Job");
        let plain = pod_for(&job, None);
        assert_eq!(plain["metadata"]["generateName"], "work-");
        assert!(plain["spec"].get("hostname").is_none());
    }
}
