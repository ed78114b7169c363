//! `sim`: a runtime without processes, for scale trials with many nodes on one machine.
//! Containers move Created → Running after `start_delay` and run until stopped; stopping
//! takes `stop_delay` and ends with exit code 0 (137 when the grace period is zero). Sandbox IPs
//! come from 10.250.0.0/16. State lives in memory only: a restarted node daemon starts empty.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{
    ContainerConfig, ContainerState, ContainerStatus, ExecOutput, ExecSession, ImageInfo,
    PullPolicy, Result, Runtime, RuntimeError, SandboxConfig, SandboxState, SandboxStatus,
};

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub start_delay: Duration,
    pub stop_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            start_delay: Duration::from_millis(100),
            stop_delay: Duration::from_millis(50),
        }
    }
}

struct SimContainer {
    status: ContainerStatus,
    /// When a started container counts as running.
    running_at: Option<SystemTime>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    sandboxes: HashMap<String, SandboxStatus>,
    containers: HashMap<String, SimContainer>,
}

pub struct SimRuntime {
    config: SimConfig,
    state: Mutex<State>,
}

impl SimRuntime {
    pub fn new(config: SimConfig) -> SimRuntime {
        SimRuntime {
            config,
            state: Mutex::new(State::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A poisoned lock only means a panic elsewhere; the state itself stays usable.
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    fn refresh(c: &mut SimContainer) {
        if c.status.state == ContainerState::Created
            && c.running_at.is_some_and(|t| SystemTime::now() >= t)
        {
            c.status.state = ContainerState::Running;
            c.status.started_at = c.running_at;
        }
    }
}

fn ready<T: Send + 'static>(v: Result<T>) -> BoxFuture<'static, Result<T>> {
    futures::future::ready(v).boxed()
}

impl Runtime for SimRuntime {
    fn name(&self) -> &'static str {
        "sim"
    }

    /// Simulated containers run until stopped.
    fn containers_change_by_themselves(&self) -> bool {
        false
    }

    fn run_sandbox(&self, config: SandboxConfig) -> BoxFuture<'_, Result<SandboxStatus>> {
        let status = self.with(|s| {
            if let Some(existing) = s
                .sandboxes
                .values()
                .find(|sb| sb.config.pod_uid == config.pod_uid)
            {
                return existing.clone();
            }
            s.next_id += 1;
            let n = s.next_id;
            let ip = (!config.host_network)
                .then(|| IpAddr::V4(Ipv4Addr::new(10, 250, (n >> 8) as u8, (n & 0xff) as u8)));
            let sb = SandboxStatus {
                id: format!("sim-sb-{n}"),
                state: SandboxState::Ready,
                ip,
                netns: None,
                created_at: SystemTime::now(),
                config,
            };
            s.sandboxes.insert(sb.id.clone(), sb.clone());
            sb
        });
        ready(Ok(status))
    }

    fn stop_sandbox(&self, id: &str) -> BoxFuture<'_, Result<()>> {
        let id = id.to_owned();
        self.with(|s| {
            for c in s
                .containers
                .values_mut()
                .filter(|c| c.status.sandbox_id == id)
            {
                if c.status.state != ContainerState::Exited {
                    c.status.state = ContainerState::Exited;
                    c.status.exit_code = Some(137);
                    c.status.reason = Some("Error".into());
                    c.status.finished_at = Some(SystemTime::now());
                }
            }
            if let Some(sb) = s.sandboxes.get_mut(&id) {
                sb.state = SandboxState::NotReady;
            }
        });
        ready(Ok(()))
    }

    fn remove_sandbox(&self, id: &str) -> BoxFuture<'_, Result<()>> {
        let id = id.to_owned();
        self.with(|s| {
            s.containers.retain(|_, c| c.status.sandbox_id != id);
            s.sandboxes.remove(&id);
        });
        ready(Ok(()))
    }

    fn sandbox_status(&self, id: &str) -> BoxFuture<'_, Result<SandboxStatus>> {
        let found = self.with(|s| s.sandboxes.get(id).cloned());
        ready(found.ok_or_else(|| RuntimeError::NotFound(format!("sandbox {id}"))))
    }

    fn list_sandboxes(&self) -> BoxFuture<'_, Result<Vec<SandboxStatus>>> {
        ready(Ok(self.with(|s| s.sandboxes.values().cloned().collect())))
    }

    fn pull_image(&self, image: &str, _policy: PullPolicy) -> BoxFuture<'_, Result<ImageInfo>> {
        ready(Ok(ImageInfo {
            id: format!("sim:{image}"),
            references: vec![image.to_owned()],
            size_bytes: 0,
        }))
    }

    fn image_status(&self, image: &str) -> BoxFuture<'_, Result<Option<ImageInfo>>> {
        ready(Ok(Some(ImageInfo {
            id: format!("sim:{image}"),
            references: vec![image.to_owned()],
            size_bytes: 0,
        })))
    }

    fn create_container(
        &self,
        sandbox_id: &str,
        config: ContainerConfig,
    ) -> BoxFuture<'_, Result<String>> {
        let result = self.with(|s| {
            if !s.sandboxes.contains_key(sandbox_id) {
                return Err(RuntimeError::NotFound(format!("sandbox {sandbox_id}")));
            }
            s.next_id += 1;
            let id = format!("sim-c-{}", s.next_id);
            let status = ContainerStatus {
                id: id.clone(),
                sandbox_id: sandbox_id.to_owned(),
                name: config.name.clone(),
                attempt: config.attempt,
                state: ContainerState::Created,
                image: config.image.clone(),
                image_ref: format!("sim:{}", config.image),
                pid: None,
                created_at: SystemTime::now(),
                started_at: None,
                finished_at: None,
                exit_code: None,
                reason: None,
                message: None,
                log_path: PathBuf::from("/dev/null"),
            };
            s.containers.insert(
                id.clone(),
                SimContainer {
                    status,
                    running_at: None,
                },
            );
            Ok(id)
        });
        ready(result)
    }

    fn start_container(&self, id: &str) -> BoxFuture<'_, Result<()>> {
        let delay = self.config.start_delay;
        let result = self.with(|s| match s.containers.get_mut(id) {
            Some(c) => {
                c.running_at = Some(SystemTime::now() + delay);
                Ok(())
            }
            None => Err(RuntimeError::NotFound(format!("container {id}"))),
        });
        ready(result)
    }

    fn stop_container(&self, id: &str, grace: Duration) -> BoxFuture<'_, Result<()>> {
        let id = id.to_owned();
        let delay = self.config.stop_delay.min(grace);
        async move {
            tokio::time::sleep(delay).await;
            self.with(|s| {
                if let Some(c) = s.containers.get_mut(&id)
                    && c.status.state != ContainerState::Exited
                {
                    let code = if grace.is_zero() { 137 } else { 0 };
                    c.status.state = ContainerState::Exited;
                    c.status.exit_code = Some(code);
                    c.status.reason = Some(if code == 0 { "Completed" } else { "Error" }.into());
                    c.status.finished_at = Some(SystemTime::now());
                }
            });
            Ok(())
        }
        .boxed()
    }

    fn remove_container(&self, id: &str) -> BoxFuture<'_, Result<()>> {
        self.with(|s| s.containers.remove(id));
        ready(Ok(()))
    }

    fn container_status(&self, id: &str) -> BoxFuture<'_, Result<ContainerStatus>> {
        let found = self.with(|s| {
            s.containers.get_mut(id).map(|c| {
                SimRuntime::refresh(c);
                c.status.clone()
            })
        });
        ready(found.ok_or_else(|| RuntimeError::NotFound(format!("container {id}"))))
    }

    fn list_containers(&self) -> BoxFuture<'_, Result<Vec<ContainerStatus>>> {
        ready(Ok(self.with(|s| {
            s.containers
                .values_mut()
                .map(|c| {
                    SimRuntime::refresh(c);
                    c.status.clone()
                })
                .collect()
        })))
    }

    fn exec_sync(
        &self,
        id: &str,
        _cmd: Vec<String>,
        _timeout: Duration,
    ) -> BoxFuture<'_, Result<ExecOutput>> {
        let running = self.with(|s| {
            s.containers
                .get(id)
                .is_some_and(|c| c.status.state != ContainerState::Exited)
        });
        ready(if running {
            Ok(ExecOutput {
                exit_code: 0,
                stdout: Vec::new(),
                stderr: Vec::new(),
            })
        } else {
            Err(RuntimeError::NotFound(format!("running container {id}")))
        })
    }

    fn exec(
        &self,
        _id: &str,
        _cmd: Vec<String>,
        _stdin: bool,
        _tty: bool,
    ) -> BoxFuture<'_, Result<ExecSession>> {
        ready(Err(RuntimeError::Invalid(
            "the sim runtime runs no processes to exec into".into(),
        )))
    }
}
