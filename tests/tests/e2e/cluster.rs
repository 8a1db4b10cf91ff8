//! Cluster dispatch against real OpenSSH servers on 127.0.0.x, one per simulated node,
//! each with its own host key and agent state directory.

use std::path::Path;
use std::process::Command;

use llem_tests::{binary, client_key, Sshd};

pub(crate) fn nodes_yaml(root: &Path, nodes: &[Sshd], known_hosts: &Path) -> String {
    let key = client_key(root);
    let mut s = String::from("nodes:\n");
    for (i, n) in nodes.iter().enumerate() {
        s += &format!(
            "  - {{name: n{}, host: {}, port: {}, user: root, identity_file: {:?}, known_hosts: {:?}, labels: {{rack: r{}}}}}\n",
            i + 1,
            n.host,
            n.port,
            key.display().to_string(),
            known_hosts.display().to_string(),
            i % 2
        );
    }
    s
}

pub(crate) const JOBS: &str = "name: cluster\nmodel: synthetic\nengine: synthetic\nn_prompts: 2\nmax_output_tokens: 30\nmeasurement: {baseline: {duration_s: 0}, warmup: {prompts: 0}, thermal_floor: {max_s: 0}}\nsweep: {synthetic.ms_per_token: [1, 2, 3, 4]}\nexecution: {cycles: 3}\n";

fn llem(dir: &Path, args: &[&str]) -> std::process::Output {
    llem_tests::coordinator().args(args).current_dir(dir).env_remove("RUST_LOG").output().expect("llem")
}

pub(crate) fn setup(n: u8) -> (tempfile::TempDir, Vec<Sshd>) {
    let dir = tempfile::tempdir().expect("tmp");
    client_key(dir.path());
    let nodes = (0..n).map(|i| Sshd::start(dir.path(), i)).collect();
    (dir, nodes)
}

pub(crate) fn journal(dir: &Path) -> String {
    let run = std::fs::read_dir(dir.join("runs")).expect("runs").flatten().next().expect("run").path();
    std::fs::read_to_string(run.join("journal.jsonl")).expect("journal")
}

#[test]
fn three_nodes_run_a_sweep_and_inject_nothing() {
    let (dir, nodes) = setup(3);
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, nodes.iter().map(Sshd::known_hosts_line).collect::<String>()).expect("known_hosts");
    // A model name a shell would run: it must reach none.
    let pwned = dir.path().join("pwned");
    let sweep = JOBS.replace("model: synthetic", &format!("model: \"$(touch {})\"", pwned.display()));
    std::fs::write(dir.path().join("sweep.yaml"), format!("{sweep}{}", nodes_yaml(dir.path(), &nodes, &kh)))
        .expect("sweep");
    let out = llem(dir.path(), &["run", "sweep.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let j = journal(dir.path());
    assert_eq!(j.matches("\"finished\"").count(), 12);
    let used: std::collections::BTreeSet<&str> =
        ["n1/cpu", "n2/cpu", "n3/cpu"].into_iter().filter(|n| j.contains(n)).collect();
    assert!(used.len() >= 2, "jobs spread over the nodes: {used:?}");
    assert!(!pwned.exists(), "a model name reached a shell");
}

#[test]
fn unknown_host_keys_are_refused_with_the_fingerprint() {
    let (dir, nodes) = setup(1);
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, "").expect("empty known_hosts");
    std::fs::write(dir.path().join("sweep.yaml"), format!("{JOBS}{}", nodes_yaml(dir.path(), &nodes, &kh)))
        .expect("sweep");
    let out = llem(dir.path(), &["run", "sweep.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not in") && stderr.contains("SHA256:") && stderr.contains("--accept-new-host-keys"),
        "{stderr}"
    );
    assert_eq!(journal(dir.path()).matches("\"finished\"").count(), 0);
    // Accepting new keys is explicit.
    let _ = std::fs::remove_dir_all(dir.path().join("runs"));
    let out = llem(dir.path(), &["run", "--accept-new-host-keys", "sweep.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // The key was recorded (possibly hashed): ssh-keygen finds it.
    let found = Command::new("ssh-keygen")
        .arg("-F")
        .arg(format!("[{}]:{}", nodes[0].host, nodes[0].port))
        .arg("-f")
        .arg(&kh)
        .output()
        .expect("keygen");
    assert!(found.status.success(), "the accepted key is in known_hosts");
}

#[test]
fn a_changed_host_key_is_always_refused() {
    let (dir, nodes) = setup(1);
    let other = dir.path().join("other_key");
    llem_tests::keygen(&other);
    let public = std::fs::read_to_string(other.with_extension("pub")).expect("pub");
    let mut p = public.split_whitespace();
    let kh = dir.path().join("known_hosts");
    std::fs::write(
        &kh,
        format!("[{}]:{} {} {}\n", nodes[0].host, nodes[0].port, p.next().unwrap_or(""), p.next().unwrap_or("")),
    )
    .expect("kh");
    std::fs::write(dir.path().join("sweep.yaml"), format!("{JOBS}{}", nodes_yaml(dir.path(), &nodes, &kh)))
        .expect("sweep");
    let out = llem(dir.path(), &["run", "--accept-new-host-keys", "sweep.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has changed: refused"), "{stderr}");
}

#[test]
fn nodes_check_reports_each_node() {
    let (dir, nodes) = setup(2);
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, nodes[0].known_hosts_line()).expect("only the first key is known");
    std::fs::write(dir.path().join("sweep.yaml"), format!("{JOBS}{}", nodes_yaml(dir.path(), &nodes, &kh)))
        .expect("sweep");
    let out = llem(dir.path(), &["nodes", "check", "--json", "sweep.yaml"]);
    assert_eq!(out.status.code(), Some(1), "one node is refused");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows[0]["ok"], true, "{rows}");
    assert!(rows[0]["rtt_ms"].as_f64().is_some());
    assert_eq!(rows[0]["probe"]["node"]["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(rows[0]["probe"]["energy_sources"].as_array().is_some_and(|s| s.len() == 3));
    assert_eq!(rows[1]["ok"], false);
    assert!(rows[1]["error"].as_str().unwrap_or("").contains("is not in"), "{rows}");
}

#[test]
fn a_remote_agent_cannot_write_outside_the_run_directory() {
    let (dir, nodes) = setup(1);
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, nodes[0].known_hosts_line()).expect("known_hosts");
    // The "agent" llem deploys to the node is a protocol speaker that sends files named
    // ../../x, an absolute path, a hidden name, and one with a wrong checksum.
    let rogue = crate::run::rogue_agent(dir.path());
    let one = JOBS.replace("[1, 2, 3, 4]", "[1]").replace("{cycles: 3}", "{cycles: 1}");
    std::fs::write(dir.path().join("sweep.yaml"), format!("{one}{}", nodes_yaml(dir.path(), &nodes, &kh)))
        .expect("sweep");
    let out = llem_tests::coordinator()
        .args(["run", "sweep.yaml"])
        .current_dir(dir.path())
        .env("LLEM_AGENT", &rogue)
        .env("RUST_LOG", "error")
        .output()
        .expect("llem");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("refused artifact \"../../x\"") && stderr.contains("is corrupt"), "{stderr}");
    let run = std::fs::read_dir(dir.path().join("runs")).expect("runs").flatten().next().expect("run").path();
    assert!(!dir.path().join("x").exists());
    crate::run::assert_only_results_stored(&run);
}

#[test]
fn deploy_keeps_the_newest_builds_and_any_in_use() {
    let (dir, nodes) = setup(1);
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, nodes[0].known_hosts_line()).expect("known_hosts");
    std::fs::write(dir.path().join("sweep.yaml"), format!("{JOBS}{}", nodes_yaml(dir.path(), &nodes, &kh)))
        .expect("sweep");
    // Builds an earlier coordinator left on the node: older by a day each.
    let bin = nodes[0].dir.join("home/.cache/llem/bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let old: Vec<std::path::PathBuf> = (1..=4)
        .map(|age| {
            let path = bin.join(format!("llem-agent-0.0.{age}-00000{age}"));
            std::fs::write(&path, "an old build").expect("old build");
            let when = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400 * age);
            std::fs::File::options().write(true).open(&path).expect("open").set_modified(when).expect("mtime");
            path
        })
        .collect();
    // The oldest is running somewhere: its agent holds it.
    let running = std::fs::File::open(&old[3]).expect("open");
    running.lock_shared().expect("in use");
    let t0 = std::time::Instant::now();
    let out = llem(dir.path(), &["nodes", "deploy", "--json", "sweep.yaml"]);
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let mut left: Vec<String> =
        std::fs::read_dir(&bin).expect("bin").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left.len(), 4, "this build, the two newest old ones and the one in use: {left:?}");
    assert!(old[0].exists() && old[1].exists() && !old[2].exists() && old[3].exists(), "{left:?}");
    let deployed = bin.join(
        left.iter().find(|n| n.starts_with(&format!("llem-agent-{}-", env!("CARGO_PKG_VERSION")))).expect("this build"),
    );
    let size = std::fs::metadata(&deployed).expect("deployed").len();
    let local = std::fs::metadata(binary("llem-agent")).expect("local").len();
    eprintln!("deployed agent: {size} bytes on the node, {local} built here, in {:.2} s", took.as_secs_f64());
    assert!(size <= local, "{size} of {local} bytes");
    // Stripped of debug sections (the CUDA agent of scripts/build-agent comes stripped).
    let sections = Command::new("readelf").args(["-S", "-W"]).arg(&deployed).output().expect("readelf");
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(
        sections.contains(".text") && !sections.contains(".debug_info"),
        "the node got debug sections:\n{sections}"
    );
    let version = Command::new(&deployed).arg("--version").output().expect("runs on the node");
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn an_ssh_config_alias_with_port_and_proxy_jump_runs_its_jobs() {
    // The node's sshd listens on its namespace's own loopback: only the jump host, inside
    // the same namespace, can reach it. The sweep names the alias and nothing else.
    let netns = match llem_tests::Netns::create(2) {
        Ok(n) => n,
        Err(why) => {
            eprintln!("SKIPPED: network namespaces are not permitted here ({why}); the ProxyJump test needs them");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tmp");
    let key = client_key(dir.path());
    let jump = Sshd::start_in(dir.path(), 0, &netns);
    let node = Sshd::start_hidden_in(dir.path(), 1, &netns, 2223);
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, format!("{}{}", jump.known_hosts_line(), node.known_hosts_line())).expect("known_hosts");
    let config = format!(
        "Host gpu-a\n  HostName {}\n  Port {}\n  User root\n  IdentityFile {}\n  UserKnownHostsFile {}\n  ProxyJump jump-a\n\nHost jump-a\n  HostName {}\n  Port {}\n  User root\n  IdentityFile {}\n  UserKnownHostsFile {}\n  BatchMode yes\n  StrictHostKeyChecking yes\n",
        node.host,
        node.port,
        key.display(),
        kh.display(),
        jump.host,
        jump.port,
        key.display(),
        kh.display()
    );
    std::fs::write(dir.path().join("ssh_config"), config).expect("ssh_config");
    let one = JOBS.replace("[1, 2, 3, 4]", "[1, 2]").replace("{cycles: 3}", "{cycles: 1}");
    std::fs::write(
        dir.path().join("sweep.yaml"),
        format!("{one}nodes:\n  - {{name: a, host: gpu-a, ssh_config: ssh_config}}\n"),
    )
    .expect("sweep");
    let out = llem(dir.path(), &["run", "sweep.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(journal(dir.path()).matches("\"finished\"").count(), 2);
    assert!(node.dir.join("home/.cache/llem/bin").is_dir(), "the agent was installed on the hidden node");
}
