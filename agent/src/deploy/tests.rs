//! The deploy transaction without podman: the real pipeline, registry
//! (SQLite in a temp dir) and port choice, over a fake container runtime,
//! proxy and DNS registrar. Each case checks what is left behind, not only
//! what is returned.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mcp_model::service::{self, ServiceDef};

use crate::config::AgentConfig;
use crate::deploy::containers::PREV_SUFFIX;
use crate::handle::{Agent, Platform};
use crate::outcome::{OpError, step};
use crate::platform::DnsRegistrar;
use crate::platform::{ProxyBackend, ProxyError, ProxyRoute};
use crate::registry::{Desired, Registry};
use crate::runtime::fake::FakeRuntime;
use crate::runtime::spec::LABEL_HASH;

/// A proxy that keeps routes in memory and fails when told to.
#[derive(Default)]
struct FakeProxy {
    routes: Mutex<BTreeMap<String, Vec<ProxyRoute>>>,
    fail: AtomicBool,
}

#[tonic::async_trait]
impl ProxyBackend for FakeProxy {
    async fn set_routes(&self, service: &str, routes: Vec<ProxyRoute>) -> Result<(), ProxyError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(ProxyError::McProxy {
                socket: "fake".into(),
                op: "set routes".into(),
                reason: "injected failure".into(),
            });
        }
        self.routes.lock().unwrap().insert(service.to_string(), routes);
        Ok(())
    }

    async fn remove_routes(&self, service: &str) -> Result<(), ProxyError> {
        self.routes.lock().unwrap().remove(service);
        Ok(())
    }

    async fn routes(&self) -> Result<Vec<ProxyRoute>, ProxyError> {
        Ok(self.routes.lock().unwrap().values().flatten().cloned().collect())
    }
}

/// A DNS registrar that keeps records in memory and fails when told to.
#[derive(Default)]
struct FakeDns {
    records: Mutex<BTreeMap<String, Ipv4Addr>>,
    fail: AtomicBool,
}

#[tonic::async_trait]
impl DnsRegistrar for FakeDns {
    async fn register(&self, _service: &str, hostname: &str, address: Ipv4Addr) -> Result<(), String> {
        if self.fail.load(Ordering::SeqCst) {
            return Err("dns refused the record (injected failure)".into());
        }
        self.records.lock().unwrap().insert(hostname.to_string(), address);
        Ok(())
    }

    async fn remove(&self, _service: &str, hostname: &str) -> Result<(), String> {
        self.records.lock().unwrap().remove(hostname);
        Ok(())
    }
}

struct Rig {
    agent: Agent,
    rt: Arc<FakeRuntime>,
    proxy: Arc<FakeProxy>,
    dns: Arc<FakeDns>,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

/// Host ports the tests hand out (high, so free on a test machine).
const PORT_MIN: u16 = 47310;

fn rig(ports: u16) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[agent]\nname = \"n1\"\naddress = \"127.0.0.1\"\ndata_dir = \"{}\"\n\
         [tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/a\"\n[ports]\nmin = {PORT_MIN}\nmax = {}\n",
        dir.path().display(),
        PORT_MIN + ports - 1
    );
    let cfg: AgentConfig = mcp_model::parse_toml(&text).unwrap();
    let db = dir.path().join("mcp.db");
    let rt = Arc::new(FakeRuntime::default());
    let proxy = Arc::new(FakeProxy::default());
    let dns = Arc::new(FakeDns::default());
    let platform = Platform {
        ca: None,
        dns: Some(dns.clone()),
        proxy: Some(proxy.clone()),
    };
    let agent = Agent::new(cfg, Registry::open(&db).unwrap(), rt.clone(), "fake".into(), platform);
    Rig {
        agent,
        rt,
        proxy,
        dns,
        db,
        _dir: dir,
    }
}

/// Service `web`, one component running `image`, with `extra` appended
/// (more routes or components).
fn web(image: &str, extra: &str) -> ServiceDef {
    let text = format!(
        "name = \"web\"\n[[components]]\nname = \"web\"\nimage = \"{image}\"\n\
         [[components.routes]]\nname = \"tls\"\nport = 443\n{extra}"
    );
    service::parse("web.toml", &text).unwrap()
}

impl Rig {
    /// Asserts `web` runs `image` and podman, registry, proxy and DNS agree.
    fn assert_runs(&self, image: &str) {
        let rec = self.agent.registry.service("web").unwrap().expect("web is recorded");
        let comp = rec.component("web").unwrap();
        assert_eq!(comp.spec.image, image, "registry");
        let c = self.rt.container("web").expect("container web exists");
        assert_eq!(c.state, "running");
        assert_eq!(c.spec.image, image, "container");
        assert_eq!(
            c.spec.labels.get(LABEL_HASH),
            Some(&comp.spec.hash()),
            "spec hash label"
        );
        assert!(
            self.rt.container(&format!("web{PREV_SUFFIX}")).is_none(),
            "no previous container left"
        );
        let routes = self
            .proxy
            .routes
            .lock()
            .unwrap()
            .get("web")
            .cloned()
            .unwrap_or_default();
        assert_eq!(routes.len(), rec.routes.len(), "proxy routes");
        for r in &routes {
            assert!(
                rec.routes
                    .iter()
                    .any(|x| r.backend == format!("127.0.0.1:{}", x.host_port)),
                "route {r:?} points at a recorded host port"
            );
        }
        let name = format!("web.{}", self.agent.cfg.network.zone);
        assert!(self.dns.records.lock().unwrap().contains_key(&name), "dns record");
    }

    async fn deploy(&self, def: ServiceDef) -> Result<crate::outcome::Outcome, OpError> {
        self.agent.deploy(def, None).await
    }
}

/// The step an error failed at, and its text.
fn failed_step(e: &OpError) -> (&'static str, String) {
    match e {
        OpError::StepFailed { step, error, .. } => (step, error.clone()),
        OpError::PortsExhausted { .. } => (step::PORTS, e.to_string()),
        other => panic!("not a step failure: {other:?}"),
    }
}

#[tokio::test]
async fn a_new_service_is_created_and_an_unchanged_redeploy_does_nothing() {
    let r = rig(4);
    let out = r.deploy(web("r/web:v1", "")).await.unwrap();
    assert!(out.changed);
    let names: Vec<_> = out.steps.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            step::PORTS,
            step::CERTIFICATES,
            step::CONTAINERS,
            step::ROUTES,
            step::DNS,
            step::REGISTRY
        ]
    );
    assert!(out.steps.iter().all(|s| s.success));
    r.assert_runs("r/web:v1");
    assert_eq!(r.rt.calls(), ["pull r/web:v1", "create web", "start web"]);

    r.rt.clear_calls();
    let again = r.deploy(web("r/web:v1", "")).await.unwrap();
    assert!(!again.changed);
    let containers = again.steps.iter().find(|s| s.name == step::CONTAINERS).unwrap();
    assert!(containers.skipped, "{containers:?}");
    assert!(r.rt.calls().is_empty(), "{:?}", r.rt.calls());
    r.assert_runs("r/web:v1");
}

#[tokio::test]
async fn a_changed_image_replaces_the_container_and_drops_the_old_one_at_commit() {
    let r = rig(4);
    r.deploy(web("r/web:v1", "")).await.unwrap();
    let port = r.agent.registry.service("web").unwrap().unwrap().routes[0].host_port;
    r.rt.clear_calls();
    let out = r.deploy(web("r/web:v2", "")).await.unwrap();
    assert!(out.changed);
    assert_eq!(
        r.rt.calls(),
        [
            "pull r/web:v2",
            "remove web-mcp-prev",
            "stop web",
            "rename web",
            "create web",
            "start web",
            "remove web-mcp-prev"
        ]
    );
    r.assert_runs("r/web:v2");
    let rec = r.agent.registry.service("web").unwrap().unwrap();
    assert_eq!(rec.routes[0].host_port, port, "a redeploy keeps its host port");
    let events = r.agent.registry.events("web", 10).unwrap();
    assert_eq!(events.last().unwrap().kind, "redeployed");
}

#[tokio::test]
async fn a_dropped_component_is_removed_after_the_registry_recorded_it() {
    let r = rig(4);
    let two = "[[components]]\nname = \"worker\"\nimage = \"r/worker:v1\"\n";
    r.deploy(web("r/web:v1", two)).await.unwrap();
    assert!(r.rt.container("web-worker").is_some());
    r.deploy(web("r/web:v1", "")).await.unwrap();
    assert!(r.rt.container("web-worker").is_none());
    let rec = r.agent.registry.service("web").unwrap().unwrap();
    assert_eq!(rec.components.len(), 1);
    r.assert_runs("r/web:v1");
}

#[tokio::test]
async fn an_inactive_service_is_stopped_and_unwired_but_kept() {
    let r = rig(4);
    r.deploy(web("r/web:v1", "")).await.unwrap();
    let mut off = web("r/web:v1", "");
    off.active = false;
    r.deploy(off).await.unwrap();
    assert_eq!(r.rt.container("web").unwrap().state, "exited");
    assert!(r.proxy.routes.lock().unwrap().get("web").is_none());
    assert!(r.dns.records.lock().unwrap().is_empty());
    let rec = r.agent.registry.service("web").unwrap().unwrap();
    assert_eq!(rec.component("web").unwrap().desired, Desired::Stopped);
}

/// A redeploy from v1 that fails at one step, and how the rig is set up
/// to make it fail there.
struct FailCase {
    name: &'static str,
    step: &'static str,
    /// What the error text must contain.
    says: &'static str,
    /// Extra definition text for v2.
    extra: &'static str,
    arrange: fn(&Rig),
}

#[tokio::test]
async fn a_failure_at_any_step_leaves_the_previous_version_running() {
    let cases = [
        FailCase {
            name: "no free host port for a new route",
            step: step::PORTS,
            says: "no free host port",
            extra: "[[components.routes]]\nname = \"admin\"\nport = 8443\n\
                    [[components.routes]]\nname = \"debug\"\nport = 9443\n",
            arrange: |_| {},
        },
        FailCase {
            name: "an L7 route but no certificate authority",
            step: step::CERTIFICATES,
            says: "no certificate authority",
            extra: "[[components.routes]]\nname = \"www\"\nport = 8443\nmode = \"l7\"\n",
            arrange: |_| {},
        },
        FailCase {
            name: "the new image cannot be pulled",
            step: step::CONTAINERS,
            says: "image r/web:v2",
            extra: "",
            arrange: |r| r.rt.fail_once("pull", "r/web:v2"),
        },
        FailCase {
            name: "the new container exits right after start",
            step: step::CONTAINERS,
            says: "right after start",
            extra: "",
            arrange: |r| r.rt.crash_on_start("r/web:v2"),
        },
        FailCase {
            name: "the new container cannot be created",
            step: step::CONTAINERS,
            says: "injected failure",
            extra: "",
            arrange: |r| r.rt.fail_once("create", "web"),
        },
        FailCase {
            name: "the proxy refuses the routes",
            step: step::ROUTES,
            says: "injected failure",
            extra: "",
            arrange: |r| r.proxy.fail.store(true, Ordering::SeqCst),
        },
        FailCase {
            name: "DNS refuses the record",
            step: step::DNS,
            says: "routes restored",
            // A new route, so the proxy's routes differ until restored.
            extra: "[[components.routes]]\nname = \"admin\"\nport = 8443\n",
            arrange: |r| r.dns.fail.store(true, Ordering::SeqCst),
        },
        FailCase {
            name: "the registry cannot record the deploy",
            step: step::REGISTRY,
            says: "injected",
            extra: "",
            arrange: |r| {
                let conn = rusqlite::Connection::open(&r.db).unwrap();
                conn.execute_batch(
                    "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'injected'); END;",
                )
                .unwrap();
            },
        },
    ];
    for case in cases {
        let r = rig(2);
        r.deploy(web("r/web:v1", "")).await.unwrap();
        (case.arrange)(&r);
        let e = r.deploy(web("r/web:v2", case.extra)).await.unwrap_err();
        let (failed, text) = failed_step(&e);
        assert_eq!(failed, case.step, "{}: {e}", case.name);
        assert!(text.contains(case.says), "{}: {text}", case.name);
        // Everything that changed was taken back.
        r.proxy.fail.store(false, Ordering::SeqCst);
        r.dns.fail.store(false, Ordering::SeqCst);
        r.assert_runs("r/web:v1");
        assert!(
            r.agent.reserved.lock().unwrap().is_empty(),
            "{}: ports still reserved",
            case.name
        );
        if let OpError::StepFailed { outcome, .. } = &e {
            let last = outcome.steps.last().unwrap();
            assert!(
                !last.success && last.name == case.step,
                "{}: {:?}",
                case.name,
                outcome.steps
            );
        }
    }
}

#[tokio::test]
async fn a_failed_first_deploy_leaves_nothing_and_frees_its_ports() {
    let r = rig(1);
    r.rt.crash_on_start("r/web:bad");
    let e = r.deploy(web("r/web:bad", "")).await.unwrap_err();
    assert_eq!(failed_step(&e).0, step::CONTAINERS);
    assert!(r.rt.names().is_empty(), "{:?}", r.rt.names());
    assert!(r.agent.registry.service("web").unwrap().is_none());
    assert!(r.agent.reserved.lock().unwrap().is_empty());
    // The one host port of the range is free again.
    r.deploy(web("r/web:v1", "")).await.unwrap();
    r.assert_runs("r/web:v1");
}

#[tokio::test]
async fn a_replace_interrupted_before_the_registry_is_taken_back_at_start() {
    // Crash right after the old container was renamed aside: only the
    // previous container exists, stopped.
    let r = rig(2);
    r.deploy(web("r/web:v1", "")).await.unwrap();
    r.rt.stage_rename("web", "web-mcp-prev", "exited");
    r.agent.repair_interrupted().await.unwrap();
    assert_eq!(r.rt.container("web").unwrap().state, "running");
    r.assert_runs("r/web:v1");

    // Crash after the replacement started, before the registry recorded
    // it: the replacement goes, the previous container comes back.
    r.rt.stage_rename("web", "web-mcp-prev", "exited");
    let mut v2 = r
        .agent
        .registry
        .service("web")
        .unwrap()
        .unwrap()
        .component("web")
        .unwrap()
        .spec
        .clone();
    v2.image = "r/web:v2".into();
    r.rt.put(&v2, "running");
    r.agent.repair_interrupted().await.unwrap();
    r.assert_runs("r/web:v1");
    let events = r.agent.registry.events("web", 10).unwrap();
    assert_eq!(events.last().unwrap().kind, "repaired");
}

#[tokio::test]
async fn a_replace_interrupted_after_the_registry_keeps_the_new_version() {
    // Crash after the registry recorded v2, before the old container was
    // dropped: the new one stays, the old one goes.
    let r = rig(2);
    r.deploy(web("r/web:v1", "")).await.unwrap();
    let old = r.rt.container("web").unwrap().spec;
    r.deploy(web("r/web:v2", "")).await.unwrap();
    let mut prev = old.clone();
    prev.name = format!("web{PREV_SUFFIX}");
    r.rt.put(&prev, "exited");
    r.rt.clear_calls();
    r.agent.repair_interrupted().await.unwrap();
    assert_eq!(r.rt.calls(), ["remove web-mcp-prev"]);
    r.assert_runs("r/web:v2");
}

#[tokio::test]
async fn stop_start_and_undeploy_follow_the_registry() {
    let r = rig(2);
    r.deploy(web("r/web:v1", "")).await.unwrap();
    r.agent.stop("web", None).await.unwrap();
    assert_eq!(r.rt.container("web").unwrap().state, "exited");
    assert!(r.proxy.routes.lock().unwrap().get("web").is_none());
    // A container lost while stopped is made again from its recorded spec.
    r.rt.stage_rename("web", "gone", "exited");
    r.agent.start("web", None).await.unwrap();
    r.assert_runs("r/web:v1");
    r.agent.undeploy("web").await.unwrap();
    assert_eq!(r.rt.names(), ["gone"]);
    assert!(r.agent.registry.service("web").unwrap().is_none());
    assert!(r.dns.records.lock().unwrap().is_empty());
}

#[tokio::test]
async fn revive_brings_back_what_should_run_and_leaves_stopped_services_alone() {
    let r = rig(2);
    r.deploy(web("r/web:v1", "")).await.unwrap();
    r.rt.stage_rename("web", "lost", "exited");
    let (_, revived) = r.agent.revive("web", None, "boot").await.unwrap();
    assert_eq!((revived.created, revived.started), (1, 0));
    r.assert_runs("r/web:v1");
    r.agent.stop("web", None).await.unwrap();
    let (out, revived) = r.agent.revive("web", None, "boot").await.unwrap();
    assert_eq!((revived.created, revived.started), (0, 0), "{out:?}");
    assert_eq!(r.rt.container("web").unwrap().state, "exited");
}
