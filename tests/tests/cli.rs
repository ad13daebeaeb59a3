//! The CLI as people meet it: --help with examples, typo suggestions, shell
//! completions, man pages, `mcp edit` with a scripted `$EDITOR`, progress and
//! colours in a real pseudo-terminal (`script`), clean `--json`, and `mcp
//! build` pushing to the local registry an image that then deploys.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mcp_tests::{REGISTRY, TestAgent, as_user, bin};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn mcp(args: &[&str]) -> Output {
    Command::new(bin("mcp"))
        .args(args)
        .env_remove("MCP_CONFIG")
        .output()
        .unwrap()
}

/// A CLI config with only a services dir, in a fresh temp dir.
fn local_config() -> (PathBuf, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("mcp-it-cli-")
        .tempdir_in("/tmp")
        .unwrap()
        .keep();
    let services = dir.join("services");
    std::fs::create_dir_all(&services).unwrap();
    let cfg = dir.join("mcp.toml");
    std::fs::write(&cfg, format!("[services]\ndir = \"{}\"\n", services.display())).unwrap();
    (cfg, services)
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\nset -e\n{body}")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn help_examples_typos_completions_and_man_pages() {
    for cmd in [
        &["deploy", "--help"][..],
        &["node", "add", "--help"],
        &["build", "--help"],
        &["--help"],
    ] {
        let out = mcp(cmd);
        assert_eq!(out.status.code(), Some(0), "{cmd:?}");
        assert!(text(&out.stdout).contains("Example"), "{cmd:?}: {}", text(&out.stdout));
    }
    let typo = mcp(&["deplyo", "web"]);
    assert_eq!(typo.status.code(), Some(2));
    assert!(text(&typo.stderr).contains("'deploy'"), "{}", text(&typo.stderr));

    // bash accepts the completion script and registers it for mcp.
    let bash = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <({} completions bash) && complete -p mcp",
            bin("mcp").display()
        ))
        .output()
        .unwrap();
    assert!(bash.status.success(), "{}", text(&bash.stderr));
    assert!(text(&bash.stdout).contains("mcp"), "{}", text(&bash.stdout));
    for shell in ["zsh", "fish"] {
        let out = mcp(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0));
        assert!(text(&out.stdout).contains("deploy"), "{shell}");
    }
    assert_eq!(mcp(&["completions", "tcsh"]).status.code(), Some(2));

    let dir = tempfile::tempdir().unwrap();
    let out = mcp(&["man", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for page in ["mcp.1", "mcp-deploy.1", "mcp-node-add.1", "mcp-build.1"] {
        let p = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(p.contains(".TH"), "{page} is not a man page");
    }
    // The page renders with man(1)'s formatter when one is installed.
    if Path::new("/usr/bin/groff").exists() {
        let r = Command::new("groff")
            .args(["-man", "-Tutf8"])
            .arg(dir.path().join("mcp-deploy.1"))
            .output()
            .unwrap();
        assert!(
            r.status.success() && text(&r.stdout).contains("Examples"),
            "{}",
            text(&r.stdout)
        );
    }
}

#[test]
fn edit_reopens_on_errors_and_saves_only_valid_files() {
    let (cfg, services) = local_config();
    let cfg_s = cfg.to_str().unwrap();
    let dir = cfg.parent().unwrap().to_path_buf();
    let good = "name = \"foo\"\n[[components]]\nname = \"web\"\nimage = \"reg.example:5000/foo:v1\"\n";
    std::fs::write(services.join("foo.toml"), good).unwrap();

    // First save is invalid (tag latest); the editor is reopened on the copy
    // with the problem at the top; the second save fixes it.
    let count = dir.join("count");
    let editor = script(
        &dir,
        "ed-fix.sh",
        &format!(
            "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\ncp \"$1\" {d}/seen$n\n\
             if [ $n = 1 ]; then sed -i 's/:v1/:latest/' \"$1\"; else sed -i 's/:latest/:v2/' \"$1\"; fi\n",
            c = count.display(),
            d = dir.display()
        ),
    );
    let out = Command::new(bin("mcp"))
        .args(["--config", cfg_s, "edit", "foo"])
        .env("EDITOR", &editor)
        .env_remove("VISUAL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&count).unwrap().trim(),
        "2",
        "editor opened twice"
    );
    let second = std::fs::read_to_string(dir.join("seen2")).unwrap();
    assert!(
        second.starts_with("# mcp edit: components[web].image:") && second.contains("latest"),
        "{second}"
    );
    assert!(
        text(&out.stderr).contains("components[web].image"),
        "{}",
        text(&out.stderr)
    );
    let saved = std::fs::read_to_string(services.join("foo.toml")).unwrap();
    assert_eq!(saved, good.replace(":v1", ":v2"), "saved without the problem lines");

    // An editor that leaves the file invalid and unchanged: given up, exit
    // 2, the file untouched.
    let stubborn = script(&dir, "ed-bad.sh", "sed -i 's/:v2/:latest/' \"$1\"\n");
    let out = Command::new(bin("mcp"))
        .args(["--config", cfg_s, "edit", "foo"])
        .env("EDITOR", &stubborn)
        .env_remove("VISUAL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not saved"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(services.join("foo.toml")).unwrap(), saved);

    // An editor that fails: nothing saved, exit 1.
    let failing = script(&dir, "ed-fail.sh", "echo 'name = \"foo\"' > \"$1\"\nexit 3\n");
    let out = Command::new(bin("mcp"))
        .args(["--config", cfg_s, "edit", "foo"])
        .env("EDITOR", &failing)
        .env_remove("VISUAL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(services.join("foo.toml")).unwrap(), saved);

    // A new service starts from a template and is created once valid.
    let new_ed = script(
        &dir,
        "ed-new.sh",
        "grep -q 'name = \"bar\"' \"$1\"\nsed -i 's|^image = \"\"|image = \"reg.example:5000/bar:v1\"|' \"$1\"\n",
    );
    let out = Command::new(bin("mcp"))
        .args(["--config", cfg_s, "edit", "bar"])
        .env("EDITOR", &new_ed)
        .env_remove("VISUAL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v = mcp(&["validate", services.join("bar.toml").to_str().unwrap()]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v.stderr));
}

/// Runs `mcp <args>` in a pseudo-terminal (util-linux `script`), returning
/// everything the terminal received and the exit code.
fn in_pty(args: &[&str], no_color: bool) -> (String, i32) {
    let line = std::iter::once(bin("mcp").display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut c = Command::new("script");
    c.args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env_remove("MCP_CONFIG");
    if no_color {
        c.env("NO_COLOR", "1");
    } else {
        c.env_remove("NO_COLOR");
    }
    let out = c.output().unwrap();
    (text(&out.stdout).replace("\r\n", "\n"), out.status.code().unwrap_or(-1))
}

#[test]
fn a_terminal_gets_progress_and_colour_json_stays_clean() {
    let agent = TestAgent::start("tty1");
    agent.define(
        "ttyweb",
        &format!("name = \"ttyweb\"\n[[components]]\nname = \"web\"\nimage = \"{REGISTRY}/mcp-test/web:v1\"\n"),
    );
    let cfg = agent.dir.join("mcp.toml");
    let cfg = cfg.to_str().unwrap();

    // On a terminal: the spinner with the deploy's name, coloured results.
    let (out, code) = in_pty(&["--direct", "--config", cfg, "deploy", "ttyweb"], false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("deploying ttyweb to tty1"), "no progress shown:\n{out:?}");
    assert!(out.contains("\u{1b}[38;5;"), "no colour on a terminal:\n{out:?}");
    assert!(out.contains("containers"), "{out:?}");

    // NO_COLOR: still progress, no colours.
    let (out, code) = in_pty(&["--direct", "--config", cfg, "deploy", "ttyweb"], true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("deploying ttyweb"), "{out:?}");
    assert!(
        !out.contains("\u{1b}[38;5;") && !out.contains("\u{1b}[3"),
        "colour despite NO_COLOR:\n{out:?}"
    );

    // --json on a terminal: nothing but the JSON document.
    let (out, code) = in_pty(&["--direct", "--json", "--config", cfg, "deploy", "ttyweb"], false);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains('\u{1b}'), "escape sequences in --json output:\n{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not clean JSON ({e}):\n{out:?}"));
    assert_eq!(v["ok"], true, "{v}");

    // Not a terminal: no progress, no escapes.
    let plain = agent.mcp(&["deploy", "ttyweb"]);
    plain.expect_code(0, "deploy without a terminal");
    assert!(!plain.stderr.contains("deploying"), "{}", plain.stderr);
    assert!(!plain.stdout.contains('\u{1b}') && !plain.stderr.contains('\u{1b}'));
    agent.mcp(&["undeploy", "ttyweb"]).expect_code(0, "undeploy");
}

#[test]
fn build_pushes_to_the_registry_and_the_image_deploys() {
    let agent = TestAgent::start("bld1");
    let nonce = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let image = format!("{REGISTRY}/mcp-test/built:{nonce}");
    let src = agent.dir.join("services/src");
    std::fs::create_dir_all(&src).unwrap();
    // FROM an image in the local registry: no network beyond loopback.
    std::fs::write(
        src.join("Containerfile"),
        format!("FROM {REGISTRY}/mcp-test/web:v1\nCOPY version.txt /www/version.txt\n"),
    )
    .unwrap();
    std::fs::write(src.join("version.txt"), format!("built-{nonce}\n")).unwrap();
    agent.define(
        "built",
        &format!(
            "name = \"built\"\npath = \"src\"\n[build.images]\nbuilt = \"Containerfile\"\n\
             [[components]]\nname = \"built\"\nimage = \"{image}\"\n"
        ),
    );
    let cfg = agent.dir.join("mcp.toml");
    // As the rootless podman user, like an operator on their workstation.
    let build = |args: &[&str]| {
        as_user(agent.user, &bin("mcp"))
            .args(["--direct", "--config"])
            .arg(&cfg)
            .args(args)
            .env_remove("MCP_CONFIG")
            .output()
            .unwrap()
    };
    let out = build(&["--json", "build", "built"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("[1/1] building") && err.contains("STEP 2/2: COPY"),
        "no build progress:\n{err}"
    );
    assert!(err.contains("[1/1] pushing"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&text(&out.stdout)).expect("clean JSON on stdout");
    assert_eq!(v["images"][0]["image"], image.as_str());
    assert_eq!(v["images"][0]["pushed"], true);

    // The registry has it: drop the local copy so the deploy must pull it.
    let tags = Command::new("curl")
        .args(["-sf", &format!("http://{REGISTRY}/v2/mcp-test/built/tags/list")])
        .output()
        .unwrap();
    assert!(text(&tags.stdout).contains(&nonce), "{}", text(&tags.stdout));
    agent.podman(&["rmi", &image]).expect_code(0, "remove the local image");
    agent.mcp(&["deploy", "built"]).expect_code(0, "deploy the built image");
    let served = agent.podman(&["exec", "built", "cat", "/www/version.txt"]);
    served.expect_code(0, "read version.txt");
    assert_eq!(served.stdout.trim(), format!("built-{nonce}"));
    agent.mcp(&["undeploy", "built"]).expect_code(0, "undeploy");

    // A Dockerfile that does not exist: refused before podman runs.
    agent.define(
        "built",
        &format!(
            "name = \"built\"\npath = \"src\"\n[build.images]\nbuilt = \"Nope\"\n\
             [[components]]\nname = \"built\"\nimage = \"{image}\"\n"
        ),
    );
    let out = build(&["build", "built"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("build.images.built") && text(&out.stderr).contains("Nope"));
}
