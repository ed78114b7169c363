//! CronJobs (batch/v1): a Job from `jobTemplate` at each time of `schedule` (in `timeZone`,
//! UTC by default), named `<cronjob>-<scheduled time in minutes since the epoch>` so a time is
//! never run twice. Only the most recent missed time runs; with `startingDeadlineSeconds` a
//! time older than that is skipped (`MissedSchedule`). `concurrencyPolicy`: Allow runs
//! alongside, Forbid waits for the running Job (a time missed meanwhile runs when it finishes,
//! deadline permitting), Replace deletes it first. Finished Jobs beyond
//! `successfulJobsHistoryLimit` / `failedJobsHistoryLimit` are deleted, oldest first. The
//! reconcile asks the runner to come back at the next scheduled time.

use flotilla_api::At;
use std::time::Duration;

use flotilla_api::ApiError;
use flotilla_api::internal::{self, Fence};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::common::*;
use super::cron;
use super::runner::{Ctx, Reconciler};

const MANAGER: &str = "cronjob-controller";
const PREFIX: &str = "/registry/batch/cronjobs/";
const JOBS: &str = "/registry/batch/jobs/";
const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed times than this get a `TooManyMissedTimes` warning.
const MISSED_CAP: usize = 100;

pub struct CronJobController;

/// Whether a Job finished, and how: `Some(true)` complete, `Some(false)` failed.
fn job_outcome(job: &Value) -> Option<bool> {
    if condition_true(job, "Complete") {
        Some(true)
    } else if condition_true(job, "Failed") {
        Some(false)
    } else {
        None
    }
}

fn secs(s: &str) -> Option<i64> {
    flotilla_api::parse_rfc3339(s).and_then(|t| i64::try_from(t).ok())
}

fn rfc3339(t: i64) -> String {
    flotilla_api::rfc3339(u64::try_from(t).unwrap_or(0))
}

fn job_ref(job: &Value) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": str_at(job, "/metadata/name"),
        "namespace": str_at(job, "/metadata/namespace"),
        "uid": str_at(job, "/metadata/uid"),
        "resourceVersion": str_at(job, "/metadata/resourceVersion"),
    })
}

/// The Job a CronJob makes for `scheduled` (seconds since the epoch).
pub fn job_for(cj: &Value, scheduled: i64, tz: &jiff::tz::TimeZone) -> Value {
    let template = cj.at("/spec/jobTemplate").cloned().unwrap_or(json!({}));
    let mut annotations = template
        .at("/metadata/annotations")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    // In the CronJob's zone, as Kubernetes writes it.
    let at = jiff::Timestamp::from_second(scheduled)
        .map(|t| {
            t.to_zoned(tz.clone())
                .strftime("%Y-%m-%dT%H:%M:%S%:z")
                .to_string()
        })
        .unwrap_or_else(|_| rfc3339(scheduled));
    annotations[SCHEDULED_AT] = json!(at);
    let mut meta = json!({
        "name": format!("{}-{}", str_at(cj, "/metadata/name"), scheduled.div_euclid(60)),
        "namespace": str_at(cj, "/metadata/namespace"),
        "annotations": annotations,
        "ownerReferences": [owner_ref(cj, "batch/v1", "CronJob")],
    });
    if let Some(labels) = template.at("/metadata/labels").filter(|l| l.is_object()) {
        meta["labels"] = labels.clone();
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    })
}

impl CronJobController {
    async fn sync(&self, ctx: &Ctx, key: &str) -> Result<Option<Duration>, ApiError> {
        let Some(fence) = ctx.fence(key) else {
            return Ok(None);
        };
        let Some(cj) = ctx.get(&format!("{PREFIX}{key}")).await? else {
            return Ok(None);
        };
        let ns = str_at(&cj, "/metadata/namespace").to_owned();
        let uid = str_at(&cj, "/metadata/uid").to_owned();
        let mut jobs: Vec<Value> = ctx
            .list(&format!("{JOBS}{ns}/"))
            .await?
            .into_iter()
            .filter(|j| controller_uid(j) == Some(uid.as_str()))
            .collect();
        jobs.sort_by(|a, b| {
            str_at(a, "/metadata/creationTimestamp").cmp(str_at(b, "/metadata/creationTimestamp"))
        });
        let mut status = cj.get("status").cloned().unwrap_or(json!({}));
        // Running Jobs, and the latest success.
        let mut active: Vec<&Value> = jobs
            .iter()
            .filter(|j| job_outcome(j).is_none() && !is_deleting(j))
            .collect();
        let last_success = jobs
            .iter()
            .filter(|j| job_outcome(j) == Some(true))
            .filter_map(|j| secs(str_at(j, "/status/completionTime")))
            .chain(secs(str_at(&status, "/lastSuccessfulTime")))
            .max();
        if let Some(t) = last_success {
            status["lastSuccessfulTime"] = json!(rfc3339(t));
        }
        self.prune_history(ctx, &cj, &jobs, &fence).await?;

        let requeue = if is_deleting(&cj) {
            None
        } else {
            self.schedule(ctx, &cj, &mut active, &mut status, &fence)
                .await?
        };

        status["active"] = json!(active.iter().map(|j| job_ref(j)).collect::<Vec<_>>());
        if active.is_empty()
            && let Some(m) = status.as_object_mut()
        {
            m.remove("active");
        }
        if cj.get("status") != Some(&status) {
            let mut updated = cj.clone();
            updated["status"] = status;
            let written = internal::replace(
                &ctx.store,
                ("batch", "v1", "cronjobs"),
                Some(&ns),
                str_at(&cj, "/metadata/name"),
                updated,
                true,
                MANAGER,
                fence,
            )
            .await?;
            if written.is_none() {
                return Ok(Some(Duration::from_millis(100)));
            }
        }
        Ok(requeue)
    }

    /// Starts the Job for the most recent due time, if it should run; when to look again.
    async fn schedule(
        &self,
        ctx: &Ctx,
        cj: &Value,
        active: &mut Vec<&Value>,
        status: &mut Value,
        fence: &Fence,
    ) -> Result<Option<Duration>, ApiError> {
        let spec = cj.get("spec").cloned().unwrap_or(json!({}));
        let schedule_text = str_at(&spec, "/schedule");
        let tz = match cron::zone(spec.get("timeZone").and_then(Value::as_str), schedule_text) {
            Ok(tz) => tz,
            Err(e) => {
                self.event_once(ctx, cj, "Warning", "UnknownTimeZone", &e.to_string(), fence)
                    .await;
                return Ok(None);
            }
        };
        let schedule = match cron::parse(schedule_text) {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("unparseable schedule: {schedule_text:?} : {e}");
                self.event_once(ctx, cj, "Warning", "UnparseableSchedule", &msg, fence)
                    .await;
                return Ok(None);
            }
        };
        if spec.get("suspend").and_then(Value::as_bool) == Some(true) {
            return Ok(None);
        }
        let now = now_secs() as i64;
        let next_wake = |from: i64| {
            schedule
                .next_after(from, &tz)
                // A little after the minute turns, so the time is surely due.
                .map(|t| Duration::from_millis(((t - now).max(0) as u64) * 1000 + 100))
        };
        let created = secs(str_at(cj, "/metadata/creationTimestamp")).unwrap_or(now);
        let mut earliest = secs(str_at(status, "/lastScheduleTime")).unwrap_or(created);
        let deadline = spec.get("startingDeadlineSeconds").and_then(Value::as_i64);
        if let Some(d) = deadline {
            earliest = earliest.max(now - d);
        }
        let (due, missed) = schedule.most_recent(earliest, now, &tz, MISSED_CAP);
        let Some(due) = due else {
            return Ok(next_wake(now));
        };
        if missed >= MISSED_CAP {
            self.event_once(
                ctx,
                cj,
                "Warning",
                "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
                fence,
            )
            .await;
        }
        if deadline.is_some_and(|d| due < now - d) {
            let msg = format!("Missed scheduled time to start a job: {}", rfc3339(due));
            self.event_once(ctx, cj, "Warning", "MissedSchedule", &msg, fence)
                .await;
            return Ok(next_wake(now));
        }
        let name = format!("{}-{}", str_at(cj, "/metadata/name"), due.div_euclid(60));
        let ns = str_at(cj, "/metadata/namespace");
        if ctx.get(&format!("{JOBS}{ns}/{name}")).await?.is_some() {
            // Already run (its status write may have been lost).
            status["lastScheduleTime"] = json!(rfc3339(due));
            return Ok(next_wake(now));
        }
        match str_at(&spec, "/concurrencyPolicy") {
            "Forbid" if !active.is_empty() => {
                // The time stays missed; the running Job's end brings us back for it.
                self.event_once(
                    ctx,
                    cj,
                    "Normal",
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid",
                    fence,
                )
                .await;
                return Ok(next_wake(now));
            }
            "Replace" => {
                for job in active.drain(..) {
                    self.delete_job(ctx, job, fence).await?;
                    let msg = format!("Deleted job {}", str_at(job, "/metadata/name"));
                    self.event(ctx, cj, "Normal", "SuccessfulDelete", &msg, fence)
                        .await;
                }
            }
            _ => {}
        }
        let job = job_for(cj, due, &tz);
        match internal::create(
            &ctx.store,
            ("batch", "v1", "jobs"),
            Some(ns),
            job,
            MANAGER,
            fence.clone(),
        )
        .await
        {
            Ok(_) => {
                self.event(
                    ctx,
                    cj,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created job {name}"),
                    fence,
                )
                .await;
            }
            Err(e) if e.code() == 409 => {}
            Err(e) => {
                let msg = format!("Error creating job: {}", e.message());
                self.event(ctx, cj, "Warning", "FailedCreate", &msg, fence)
                    .await;
                return Err(e);
            }
        }
        status["lastScheduleTime"] = json!(rfc3339(due));
        // The new Job joins `active` when the next reconcile reads it (its creation wakes us).
        Ok(next_wake(now).or(Some(Duration::from_secs(1))))
    }

    /// Deletes finished Jobs beyond the history limits, oldest first.
    async fn prune_history(
        &self,
        ctx: &Ctx,
        cj: &Value,
        jobs: &[Value],
        fence: &Fence,
    ) -> Result<(), ApiError> {
        for (outcome, field) in [
            (true, "/spec/successfulJobsHistoryLimit"),
            (false, "/spec/failedJobsHistoryLimit"),
        ] {
            let Some(limit) = cj.at(field).and_then(Value::as_u64) else {
                continue;
            };
            let mut finished: Vec<&Value> = jobs
                .iter()
                .filter(|j| job_outcome(j) == Some(outcome) && !is_deleting(j))
                .collect();
            finished.sort_by(|a, b| {
                let start = |j: &Value| {
                    let s = str_at(j, "/status/startTime");
                    if s.is_empty() {
                        str_at(j, "/metadata/creationTimestamp").to_owned()
                    } else {
                        s.to_owned()
                    }
                };
                start(a).cmp(&start(b))
            });
            let surplus = finished.len().saturating_sub(limit as usize);
            for job in &finished[..surplus] {
                self.delete_job(ctx, job, fence).await?;
                let msg = format!("Deleted job {}", str_at(job, "/metadata/name"));
                self.event(ctx, cj, "Normal", "SuccessfulDelete", &msg, fence)
                    .await;
            }
        }
        Ok(())
    }

    /// Deletes a Job and its pods (background propagation, done here).
    async fn delete_job(&self, ctx: &Ctx, job: &Value, fence: &Fence) -> Result<(), ApiError> {
        let ns = str_at(job, "/metadata/namespace");
        for pod in owned_pods(ctx, ns, str_at(job, "/metadata/uid")).await? {
            if !is_deleting(&pod) {
                delete_pod(&ctx.store, &pod, fence).await?;
            }
        }
        internal::delete(
            &ctx.store,
            ("batch", "v1", "jobs"),
            Some(ns),
            str_at(job, "/metadata/name"),
            Some(str_at(job, "/metadata/uid")),
            None,
            fence.clone(),
        )
        .await?;
        Ok(())
    }

    async fn event(
        &self,
        ctx: &Ctx,
        cj: &Value,
        kind: &str,
        reason: &str,
        message: &str,
        fence: &Fence,
    ) {
        record(
            &ctx.store, cj, "batch/v1", "CronJob", kind, reason, message, MANAGER, fence,
        )
        .await;
    }

    /// An event that a resync would otherwise repeat every few seconds: recorded only if the
    /// last one about this CronJob with this reason said something else.
    async fn event_once(
        &self,
        ctx: &Ctx,
        cj: &Value,
        kind: &str,
        reason: &str,
        message: &str,
        fence: &Fence,
    ) {
        let ns = str_at(cj, "/metadata/namespace");
        let uid = str_at(cj, "/metadata/uid");
        let seen = ctx
            .list(&format!("/registry/core/events/{ns}/"))
            .await
            .unwrap_or_default()
            .iter()
            .any(|e| {
                str_at(e, "/involvedObject/uid") == uid
                    && str_at(e, "/reason") == reason
                    && str_at(e, "/message") == message
            });
        if !seen {
            self.event(ctx, cj, kind, reason, message, fence).await;
        }
    }
}

impl Reconciler for CronJobController {
    fn name(&self) -> &'static str {
        "CronJob"
    }

    fn prefix(&self) -> &'static str {
        PREFIX
    }

    fn related(&self) -> &'static [&'static str] {
        &[JOBS]
    }

    fn keys_for(&self, job: &Value) -> Vec<String> {
        owner_keys(job, "CronJob")
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
    fn jobs_are_named_by_the_scheduled_minute() {
        let cj = json!({
            "metadata": {"name": "backup", "namespace": "ops", "uid": "u1"},
            "spec": {"jobTemplate": {"metadata": {"labels": {"team": "a"}},
                "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}}},
        });
        // 2026-03-01T10:30:00Z
        let t = 1_772_361_000;
        let job = job_for(&cj, t, &jiff::tz::TimeZone::UTC);
        assert_eq!(job["metadata"]["name"], format!("backup-{}", t / 60));
        assert_eq!(job["metadata"]["namespace"], "ops");
        assert_eq!(job["metadata"]["labels"]["team"], "a");
        assert_eq!(
            job["metadata"]["annotations"][SCHEDULED_AT],
            "2026-03-01T10:30:00+00:00"
        );
        assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
        assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["name"],
            "c"
        );
    }
}
