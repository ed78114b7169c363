//! Container lifecycle hooks (`lifecycle.postStart`, `lifecycle.preStop`): exec in the
//! container, httpGet to the pod (the same code as httpGet probes), or sleep.

use std::time::Duration;

use serde_json::Value;

use super::probes;
use crate::runtime::Runtime;

/// How long a postStart hook may run. Kubernetes sets no bound, but the pod worker waits for
/// the hook, so a hook that never returns would stall the pod for good.
pub const POST_START_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a hook runs: the container, and how its network is reached.
pub struct HookTarget<'a> {
    pub container_id: &'a str,
    pub container: &'a Value,
    /// The container's process when it has its own network namespace.
    pub isolated_pid: Option<u32>,
    pub pod_ip: Option<&'a str>,
}

/// The handler of `lifecycle.<kind>` (`postStart` or `preStop`), if the container has one.
pub fn handler<'a>(container: &'a Value, kind: &str) -> Option<&'a Value> {
    container
        .get("lifecycle")?
        .get(kind)
        .filter(|h| h.is_object())
}

/// Runs a hook to completion within `timeout`; the error says why it failed, as the event
/// message shows it.
pub async fn run(
    rt: &dyn Runtime,
    target: &HookTarget<'_>,
    handler: &Value,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(exec) = handler.get("exec") {
        let out = tokio::time::timeout(
            timeout,
            probes::exec(rt, target.container_id, exec, timeout),
        )
        .await
        .map_err(|_| format!("exec hook timed out after {}s", timeout.as_secs()))?
        .map_err(|e| format!("exec hook failed: {e}"))?;
        if out.exit_code != 0 {
            let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
            output.push_str(&String::from_utf8_lossy(&out.stderr));
            return Err(format!(
                "command {} exited with {}: {}",
                command_text(exec),
                out.exit_code,
                output.trim()
            ));
        }
        return Ok(());
    }
    if let Some(h) = handler.get("httpGet") {
        let code = probes::http_get_handler(
            h,
            target.container,
            target.isolated_pid,
            target.pod_ip,
            timeout,
        )
        .await
        .map_err(|e| format!("http hook failed: {e}"))?;
        return if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("http hook answered HTTP {code}"))
        };
    }
    if let Some(sleep) = handler.get("sleep") {
        let seconds = sleep
            .get("seconds")
            .and_then(Value::as_u64)
            .ok_or("sleep hook needs seconds")?;
        tokio::time::sleep(Duration::from_secs(seconds).min(timeout)).await;
        return Ok(());
    }
    Err("unsupported hook handler: use exec, httpGet or sleep".into())
}

fn command_text(exec: &Value) -> String {
    exec.get("command")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .map(|c| format!("'{c}'"))
        .unwrap_or_default()
}
