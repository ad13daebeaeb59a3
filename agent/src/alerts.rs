//! Alerts: every alert goes to the log, and to `monitor.alert_command`
//! when one is configured.

use std::time::Duration;

/// Sends an alert: to the log, and to `monitor.alert_command` when set
/// (the event as JSON on stdin and as `MCP_EVENT_*` variables). Never
/// blocks the caller; a command that hangs is killed after 30 s.
pub fn send(command: &[String], node: &str, service: &str, component: &str, kind: &str, message: &str) {
    tracing::warn!(alert = kind, %service, %component, %message, "alert");
    let Some((program, args)) = command.split_first() else {
        return;
    };
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let event = serde_json::json!({
        "node": node,
        "service": service,
        "component": component,
        "kind": kind,
        "message": message,
        "time": time,
    });
    let mut c = tokio::process::Command::new(program);
    c.args(args)
        .env("MCP_EVENT_NODE", node)
        .env("MCP_EVENT_SERVICE", service)
        .env("MCP_EVENT_COMPONENT", component)
        .env("MCP_EVENT_KIND", kind)
        .env("MCP_EVENT_MESSAGE", message)
        .env("MCP_EVENT_TIME", time.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let program = program.clone();
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut child = match c.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(command = %program, error = %e, "cannot run the alert command");
                return;
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(format!("{event}\n").as_bytes()).await;
        }
        match tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await {
            Ok(Ok(o)) if o.status.success() => {}
            Ok(Ok(o)) => tracing::error!(
                command = %program,
                status = %o.status,
                stderr = %String::from_utf8_lossy(&o.stderr).trim(),
                "alert command failed"
            ),
            Ok(Err(e)) => tracing::error!(command = %program, error = %e, "alert command failed"),
            Err(_) => tracing::error!(command = %program, "alert command timed out after 30s; killed"),
        }
    });
}
