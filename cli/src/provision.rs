//! `mcp node provision <name>`: set a Debian host up as an mcp node over
//! SSH as root. Every step checks first and changes only what differs, so a
//! second run reports every step `unchanged`.
//!
//! Steps: the podman user with its pinned UID (refused when the UID belongs
//! to another user or the user has another UID: a rootless user is never
//! renumbered), subordinate ID ranges, linger, the install dir, packages,
//! the user's podman.socket, the agent binary, the agent configuration
//! (joined to the master), the systemd unit, fallback resolvers, start.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::config::{DEFAULT_INSTALL_DIR, NodeRef};
use crate::ctx::Ctx;
use crate::output::{print_json, print_table, table};
use crate::release::Binary;
use crate::ssh::{Login, Session, Target, quote, quote_path};

/// The unit template; provisioning substitutes user, UID and directory.
const AGENT_UNIT: &str = include_str!("../../systemd/mcp-agent.service");

/// Options of `mcp node provision`.
#[derive(clap::Args, Debug)]
pub struct ProvisionArgs {
    /// Node (from [[nodes]]; its `ssh` host is logged into as root).
    pub name: String,
    /// Release directory with <arch>/mcp-agent [default: upgrade.dist].
    #[arg(long)]
    pub dist: Option<PathBuf>,
    /// Record the host key on first contact (see `mcp agent upgrade`).
    #[arg(long)]
    pub accept_new_host_key: bool,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Result_ {
    Changed,
    Unchanged,
    Skipped,
}

struct Step {
    name: &'static str,
    result: Result_,
    detail: String,
}

/// Runs a step script: exit 0 with stdout `changed` or `unchanged` (and an
/// optional detail line), anything else is a failure carrying stderr.
async fn step(s: &Session, name: &'static str, script: &str) -> Result<Step> {
    let out = s.exec(&format!("sh -c {}", quote(script))).await?;
    if !out.success() {
        bail!(
            "node {}: step {name} failed: {}",
            s.target.node,
            if out.stderr.trim().is_empty() {
                out.stdout.trim()
            } else {
                out.stderr.trim()
            }
        );
    }
    let mut lines = out.stdout.lines();
    let result = match lines.next().map(str::trim) {
        Some("changed") => Result_::Changed,
        Some("unchanged") => Result_::Unchanged,
        Some("skipped") => Result_::Skipped,
        other => bail!("node {}: step {name}: unexpected output {other:?}", s.target.node),
    };
    Ok(Step {
        name,
        result,
        detail: lines.collect::<Vec<_>>().join(" "),
    })
}

/// The agent unit for `user`/`uid`/`dir`.
fn render_unit(user: &str, uid: u32, dir: &str) -> String {
    AGENT_UNIT
        .replace("/srv/mcp", dir)
        .replace("user@850.service", &format!("user@{uid}.service"))
        .replace("/run/user/850", &format!("/run/user/{uid}"))
        .replace("User=mcp", &format!("User={user}"))
        .replace("Group=mcp", &format!("Group={user}"))
}

/// Runs `mcp node provision`.
pub async fn provision(ctx: &Ctx, args: ProvisionArgs) -> Result<u8> {
    let node = ctx.node(&args.name)?.clone();
    let target = Target::of(&node, Some("root"))?;
    let p = &ctx.cfg.provision;
    let (user, uid) = (p.user.as_str(), p.uid);
    let dir = node
        .install_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_INSTALL_DIR));
    let dir_s = dir.to_string_lossy().to_string();
    let arch = node.arch.clone().unwrap_or_else(|| "amd64".into());
    let dist = args.dist.clone().unwrap_or_else(|| ctx.cfg.upgrade.dist.clone());
    let binary = Binary::read(&Binary::path(&dist, &arch))?;
    let login = Login::new(&ctx.cfg.ssh, args.accept_new_host_key);
    let name = node.name.as_str();
    eprintln!("{name}: connecting to root@{}", target.known_hosts_name());
    let s = Session::connect(&target, &login).await?;
    let result = run_steps(ctx, &node, &s, user, uid, &dir_s, &binary).await;
    s.close().await;
    let steps = result?;
    if ctx.out.json {
        let rows: Vec<_> = steps
            .iter()
            .map(|st| json!({"step": st.name, "result": label(st.result), "detail": st.detail}))
            .collect();
        print_json(&json!({"node": name, "steps": rows}));
    } else {
        let mut t = table(&["STEP", "RESULT", "DETAIL"]);
        for st in &steps {
            t.add_row(vec![
                st.name.to_string(),
                label(st.result).to_string(),
                st.detail.clone(),
            ]);
        }
        print_table(&t);
        let changed = steps.iter().filter(|s| s.result == Result_::Changed).count();
        println!(
            "{name}: {}",
            if changed == 0 {
                "unchanged (already provisioned)".to_string()
            } else {
                format!("{changed} step(s) changed")
            }
        );
    }
    Ok(0)
}

fn label(r: Result_) -> &'static str {
    match r {
        Result_::Changed => "changed",
        Result_::Unchanged => "unchanged",
        Result_::Skipped => "skipped",
    }
}

async fn run_steps(
    ctx: &Ctx,
    node: &NodeRef,
    s: &Session,
    user: &str,
    uid: u32,
    dir: &str,
    binary: &Binary,
) -> Result<Vec<Step>> {
    let sha = binary.sha256.as_str();
    let p = &ctx.cfg.provision;
    let name = node.name.as_str();
    let (qu, qd) = (quote(user), quote(dir));
    let mut steps = Vec::new();
    let mut push = |st: Step| {
        eprintln!(
            "{name}: {}: {}{}",
            st.name,
            label(st.result),
            if st.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", st.detail)
            }
        );
        steps.push(st);
    };

    push(step(s, "os", "[ -f /etc/debian_version ] || { echo 'not a Debian host (no /etc/debian_version)' >&2; exit 1; }; [ \"$(id -u)\" = 0 ] || { echo 'provisioning needs root' >&2; exit 1; }; echo unchanged; echo \"Debian $(cat /etc/debian_version)\"").await?);

    push(
        step(
            s,
            "user",
            &format!(
                "u={qu}; uid={uid}\n\
                 if getent passwd \"$u\" >/dev/null; then\n\
                 \x20 cur=$(id -u \"$u\")\n\
                 \x20 if [ \"$cur\" = \"$uid\" ]; then echo unchanged; echo \"$u has UID $uid\"; exit 0; fi\n\
                 \x20 echo \"user $u exists with UID $cur, not $uid: refusing to renumber it (a rootless podman user's UID must never change; set provision.uid = $cur if that is intended)\" >&2; exit 1\n\
                 fi\n\
                 if other=$(getent passwd \"$uid\"); then echo \"UID $uid is taken by user ${{other%%:*}}: refusing (pick another provision.uid, never renumber)\" >&2; exit 1; fi\n\
                 useradd --uid \"$uid\" --user-group --create-home --shell /bin/bash --comment 'mcp agent (rootless podman)' \"$u\"\n\
                 echo changed; echo \"created $u with UID $uid\""
            ),
        )
        .await?,
    );

    push(
        step(
            s,
            "subids",
            &format!(
                "u={qu}; changed=\n\
                 for f in /etc/subuid /etc/subgid; do\n\
                 \x20 grep -q \"^$u:\" \"$f\" 2>/dev/null && continue\n\
                 \x20 start=$(awk -F: 'BEGIN{{m=100000}} {{e=$2+$3; if (e>m) m=e}} END{{print m}}' /etc/subuid /etc/subgid 2>/dev/null)\n\
                 \x20 end=$((start + 65535))\n\
                 \x20 if [ \"$f\" = /etc/subuid ]; then usermod --add-subuids \"$start-$end\" \"$u\"; else usermod --add-subgids \"$start-$end\" \"$u\"; fi\n\
                 \x20 changed=1\n\
                 done\n\
                 if [ -n \"$changed\" ]; then echo changed; else echo unchanged; fi; grep \"^$u:\" /etc/subuid | head -1"
            ),
        )
        .await?,
    );

    push(
        step(
            s,
            "linger",
            &format!(
                "u={qu}\n\
                 [ -e /var/lib/systemd/linger/\"$u\" ] && {{ echo unchanged; exit 0; }}\n\
                 if [ -d /run/systemd/system ]; then loginctl enable-linger \"$u\"; else mkdir -p /var/lib/systemd/linger && touch /var/lib/systemd/linger/\"$u\"; fi\n\
                 echo changed"
            ),
        )
        .await?,
    );

    push(
        step(
            s,
            "directory",
            &format!(
                "u={qu}; d={qd}\n\
                 if [ -d \"$d\" ]; then case \"$(stat -c %U:%G:%a \"$d\")\" in \"$u:$u:700\"|\"$u:$u:750\") echo unchanged; echo \"$d\"; exit 0;; esac; fi\n\
                 install -d -o \"$u\" -g \"$u\" -m 0750 \"$d\" && chown \"$u:$u\" \"$d\" && chmod 0750 \"$d\"\n\
                 echo changed; echo \"$d owned by $u, mode 0750\""
            ),
        )
        .await?,
    );

    let pkgs: Vec<String> = p.packages.iter().map(|x| quote(x)).collect();
    push(
        step(
            s,
            "packages",
            &format!(
                "missing=\n\
                 for p in {}; do\n\
                 \x20 [ \"$(dpkg-query -W -f='${{Status}}' \"$p\" 2>/dev/null)\" = 'install ok installed' ] || missing=\"$missing $p\"\n\
                 done\n\
                 [ -z \"$missing\" ] && {{ echo unchanged; exit 0; }}\n\
                 export DEBIAN_FRONTEND=noninteractive\n\
                 apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends $missing >&2\n\
                 echo changed; echo \"installed$missing\"",
                pkgs.join(" ")
            ),
        )
        .await?,
    );

    push(
        step(
            s,
            "podman-socket",
            &format!(
                "u={qu}; h=$(getent passwd \"$u\" | cut -d: -f6)\n\
                 w=\"$h/.config/systemd/user/sockets.target.wants\"\n\
                 [ -L \"$w/podman.socket\" ] && {{ echo unchanged; exit 0; }}\n\
                 [ -f /usr/lib/systemd/user/podman.socket ] || {{ echo 'no /usr/lib/systemd/user/podman.socket (is podman installed?)' >&2; exit 1; }}\n\
                 runuser -u \"$u\" -- mkdir -p \"$w\"\n\
                 runuser -u \"$u\" -- ln -sf /usr/lib/systemd/user/podman.socket \"$w/podman.socket\"\n\
                 echo changed; echo 'podman.socket enabled in the user manager'"
            ),
        )
        .await?,
    );

    // Binary: same checks as an upgrade (upload to .new, SHA-256 on the
    // node, atomic rename).
    let cur = format!("{dir}/mcp-agent");
    let have = s.exec(&format!("sha256sum {} 2>/dev/null", quote(&cur))).await?;
    if have.stdout.split_whitespace().next() == Some(sha) {
        push(Step {
            name: "binary",
            result: Result_::Unchanged,
            detail: format!("{cur} sha256 {}", &sha[..16]),
        });
    } else {
        let new = quote(&format!("{dir}/mcp-agent.new"));
        let out = s
            .exec_with_input(&format!("umask 022 && cat > {new}"), &binary.bytes, |_| {})
            .await?;
        if !out.success() {
            bail!("node {name}: uploading the agent: {}", out.stderr.trim());
        }
        let sum = s.run(&format!("sha256sum {new}")).await?;
        if sum.split_whitespace().next() != Some(sha) {
            let _ = s.exec(&format!("rm -f {new}")).await;
            bail!("node {name}: the uploaded agent's SHA-256 differs; nothing installed");
        }
        s.run(&format!(
            "chown {qu}:{qu} {new} && chmod 0755 {new} && mv -f {new} {}",
            quote(&cur)
        ))
        .await?;
        push(Step {
            name: "binary",
            result: Result_::Changed,
            detail: format!("installed {cur} sha256 {}", &sha[..16]),
        });
    }

    // Configuration: join the fleet once; an existing configuration (the
    // node's identity) is never overwritten.
    let conf = format!("{dir}/mcp-agent.toml");
    let exists = s.exec(&format!("test -f {}", quote(&conf))).await?.success();
    if exists {
        push(Step {
            name: "config",
            result: Result_::Unchanged,
            detail: format!("{conf} exists (joined)"),
        });
    } else {
        let Some(master) = ctx.cfg.master.as_ref() else {
            bail!(
                "node {name}: {conf} is missing and no [master] is configured in {}: provisioning joins the node to the master",
                ctx.path.display()
            );
        };
        let mut client = ctx.master(Duration::from_secs(15)).await?;
        let token = client.add_node(name, 600).await?.token;
        let first = node.address.list().into_iter().next().unwrap_or_default();
        let (host, port) = first.rsplit_once(':').unwrap_or((first.as_str(), "9444"));
        let cmd = format!(
            "cd / && MCP_JOIN_TOKEN={} runuser -u {qu} -- {} join --config {} --master {} --listen {} --address {} --data-dir {qd} --podman-socket {}",
            quote(&token),
            quote(&cur),
            quote(&conf),
            quote(&master.address),
            quote(&format!("0.0.0.0:{port}")),
            quote(host),
            quote(&format!("/run/user/{uid}/podman/podman.sock")),
        );
        s.run(&cmd).await.context("joining the master")?;
        push(Step {
            name: "config",
            result: Result_::Changed,
            detail: format!("joined {} as {name}; wrote {conf}", master.address),
        });
    }

    let unit_path = p.unit_dir.join("mcp-agent.service");
    let unit = render_unit(user, uid, dir);
    let current = s.exec(&format!("cat {} 2>/dev/null", quote_path(&unit_path))).await?;
    if current.success() && current.stdout == unit {
        push(Step {
            name: "unit",
            result: Result_::Unchanged,
            detail: unit_path.display().to_string(),
        });
    } else {
        let tmp = quote(&format!("{}.mcp-new", unit_path.display()));
        let out = s
            .exec_with_input(
                &format!(
                    "mkdir -p {} && umask 022 && cat > {tmp} && mv -f {tmp} {}",
                    quote_path(&p.unit_dir),
                    quote_path(&unit_path)
                ),
                unit.as_bytes(),
                |_| {},
            )
            .await?;
        if !out.success() {
            bail!("node {name}: writing {}: {}", unit_path.display(), out.stderr.trim());
        }
        push(Step {
            name: "unit",
            result: Result_::Changed,
            detail: format!("wrote {}", unit_path.display()),
        });
    }

    if p.fallback_dns.is_empty() {
        push(Step {
            name: "dns-fallback",
            result: Result_::Skipped,
            detail: "no provision.fallback_dns configured".into(),
        });
    } else {
        let rc = quote_path(&p.resolv_conf);
        let ips: Vec<String> = p.fallback_dns.iter().map(|x| quote(x)).collect();
        push(
            step(
                s,
                "dns-fallback",
                &format!(
                    "f={rc}; added=\n\
                     for ip in {}; do\n\
                     \x20 grep -Eq \"^nameserver[[:space:]]+$ip([[:space:]]|\\$)\" \"$f\" 2>/dev/null && continue\n\
                     \x20 echo \"nameserver $ip\" >> \"$f\"; added=\"$added $ip\"\n\
                     done\n\
                     if [ -n \"$added\" ]; then echo changed; echo \"added$added to $f\"; else echo unchanged; echo \"$f lists the fallbacks\"; fi",
                    ips.join(" ")
                ),
            )
            .await?,
        );
    }

    push(
        step(
            s,
            "start",
            "if [ ! -d /run/systemd/system ]; then echo skipped; echo 'systemd is not running on this host (not PID 1): unit installed, agent not started'; exit 0; fi\n\
             systemctl daemon-reload\n\
             if systemctl is-enabled --quiet mcp-agent && systemctl is-active --quiet mcp-agent; then echo unchanged; echo 'mcp-agent enabled and active'; exit 0; fi\n\
             systemctl enable --now mcp-agent >&2 && echo changed && echo 'mcp-agent enabled and started'",
        )
        .await?,
    );
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_is_rendered_for_user_uid_and_dir() {
        let u = render_unit("mcpprov", 8599, "/tmp/x/srv");
        assert!(u.contains("User=mcpprov\n") && u.contains("Group=mcpprov\n"), "{u}");
        assert!(
            u.contains("ExecStart=/tmp/x/srv/mcp-agent run --config /tmp/x/srv/mcp-agent.toml"),
            "{u}"
        );
        assert!(
            u.contains("ReadWritePaths=/tmp/x/srv\n") && u.contains("/run/user/8599"),
            "{u}"
        );
        assert!(
            u.contains("user@8599.service") && !u.contains("850.") && !u.contains("/850"),
            "{u}"
        );
        assert_eq!(render_unit("mcp", 850, "/srv/mcp"), AGENT_UNIT);
    }
}
