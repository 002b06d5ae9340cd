//! Data-parallel training over MPI (built with `--features mpi`; `.ci/run` installs Open MPI):
//! N ranks under `mpirun` against one process with `grad_accum × N`, bit for bit; a rank that
//! dies; resume on another world size; the parameter-hash check.

use crate::support::{codex_process, corpus, lines, tempdir, tiny_args};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Compute threads per process in these tests: the same in every rank and in the single
/// process they are compared with (the kernels' summation order may depend on it).
const THREADS: &str = "1";

/// `mpirun -np N codex ARGS`, as root too, more ranks than cores allowed.
fn mpirun(n: usize, args: &[String]) -> Command {
    let codex = codex_process();
    let mut cmd = Command::new("mpirun");
    for (k, v) in codex.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("RAYON_NUM_THREADS", THREADS)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args([
            "-np",
            &n.to_string(),
            "--oversubscribe",
            "--bind-to",
            "none",
        ])
        .arg(codex.get_program())
        .args(args);
    cmd
}

fn single(args: &[String]) -> Command {
    let mut cmd = codex_process();
    cmd.env("RAYON_NUM_THREADS", THREADS).args(args);
    cmd
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every step's train loss, and every eval's val loss, as exact bits.
fn losses(run: &Path) -> (Vec<u64>, Vec<u64>) {
    let ev = lines(&run.join("metrics.ndjson"));
    let pick = |kind: &str, key: &str| -> Vec<u64> {
        ev.iter()
            .filter(|e| e["event"] == kind)
            .map(|e| e[key].as_f64().unwrap().to_bits())
            .collect()
    };
    (pick("step", "train_loss"), pick("eval", "val_loss"))
}

fn same_final_weights(a: &Path, b: &Path, step: u64) {
    let ck = format!("checkpoints/step-{step:08}");
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let fa = std::fs::read(a.join(&ck).join(f)).unwrap();
        let fb = std::fs::read(b.join(&ck).join(f)).unwrap();
        assert!(
            fa == fb,
            "{f} of {} differs from {}",
            b.display(),
            a.display()
        );
    }
}

fn assert_same_run(a: &Path, b: &Path, steps: usize) {
    let (la, ea) = losses(a);
    let (lb, eb) = losses(b);
    assert_eq!(la.len(), steps, "one step event a step, from rank 0 only");
    assert_eq!(la, lb, "train losses differ");
    assert_eq!(ea, eb, "val losses differ");
    same_final_weights(a, b, steps as u64);
}

#[test]
fn two_ranks_equal_one_process_with_grad_accum_2() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_ok(&mut single(&tiny_args(
        &input,
        &a,
        &["training.grad_accum=2"],
    )));
    // Through `--nproc`, which starts the local mpirun itself.
    let mut args = tiny_args(&input, &b, &[]);
    args.extend(["--nproc".into(), "2".into()]);
    let mut cmd = single(&args);
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    let out = run_ok(&mut cmd);
    assert_same_run(&a, &b, 12);
    // Rank 0 alone wrote the record: one summary line, one start event saying the world.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let ev = lines(&b.join("metrics.ndjson"));
    let start: Vec<&Value> = ev.iter().filter(|e| e["event"] == "start").collect();
    assert_eq!(start.len(), 1);
    assert_eq!(start[0]["global_batch"], 8);
    let prov: Value =
        serde_json::from_slice(&std::fs::read(b.join("provenance.json")).unwrap()).unwrap();
    let d = &prov["distributed"];
    assert_eq!(d["world"], 2, "{prov}");
    assert_eq!(d["engine"], "mpi");
    assert_eq!(d["reduce"], "ordered");
    assert_eq!(d["global_batch"], 8);
    assert_eq!(d["hosts"].as_array().unwrap().len(), 2);
    assert!(d["library"].as_str().unwrap().contains("MPI"), "{d}");
    // Each rank's own part is in the checkpoint, listed (checksummed) in the manifest.
    let ck = b.join("checkpoints/step-00000012");
    let manifest = std::fs::read_to_string(ck.join("MANIFEST.json")).unwrap();
    for r in 0..2 {
        let st: Value =
            serde_json::from_slice(&std::fs::read(ck.join(format!("rank-{r}.json"))).unwrap())
                .unwrap();
        assert_eq!(st["rank"], r);
        assert_eq!(st["world"], 2);
        assert_eq!(st["micro_batches"], serde_json::json!([r]));
        assert!(manifest.contains(&format!("rank-{r}.json")));
    }
}

#[test]
fn four_ranks_and_two_ranks_of_two_equal_one_process_with_grad_accum_4() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let steps = "training.steps=6";
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    run_ok(&mut single(&tiny_args(
        &input,
        &a,
        &[steps, "training.grad_accum=4"],
    )));
    run_ok(&mut mpirun(
        4,
        &tiny_args(&input, &b, &[steps, "distributed.reduce=\"ordered\""]),
    ));
    run_ok(&mut mpirun(
        2,
        &tiny_args(&input, &c, &[steps, "training.grad_accum=2"]),
    ));
    assert_same_run(&a, &b, 6);
    assert_same_run(&a, &c, 6);
}

/// Dropout (each micro-batch draws the masks it draws in one process) and bf16 weights (every
/// addition rounded as candle's bf16 add rounds) keep the equivalence.
#[test]
fn dropout_and_bf16_keep_two_ranks_equal_to_one_process() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let extra = [
        "training.steps=6",
        "model.overrides.dropout=0.1",
        "training.dtype=\"bf16\"",
    ];
    let mut single_args = extra.to_vec();
    single_args.push("training.grad_accum=2");
    run_ok(&mut single(&tiny_args(&input, &a, &single_args)));
    run_ok(&mut mpirun(2, &tiny_args(&input, &b, &extra)));
    assert_same_run(&a, &b, 6);
}

#[test]
fn native_reduce_trains_close_to_the_ordered_one() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let steps = "training.steps=6";
    run_ok(&mut single(&tiny_args(
        &input,
        &a,
        &[steps, "training.grad_accum=2"],
    )));
    run_ok(&mut mpirun(
        2,
        &tiny_args(&input, &b, &[steps, "distributed.reduce=\"native\""]),
    ));
    let ((la, _), (lb, _)) = (losses(&a), losses(&b));
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        let (x, y) = (f64::from_bits(*x), f64::from_bits(*y));
        assert!((x - y).abs() < 1e-3 * x.abs(), "{x} vs {y}");
    }
}

/// Long enough that the kill lands mid-run.
const STEPS: &str = "training.steps=30";

/// The pid of rank `r` among the children of `mpirun`.
fn rank_pid(mpirun: u32, r: usize) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // `pid (comm) state ppid …`; comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(mpirun) {
            continue;
        }
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let want = format!("OMPI_COMM_WORLD_RANK={r}");
        if env.split(|&b| b == 0).any(|kv| kv == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

fn newest_checkpoint_step(run: &Path) -> u64 {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("MANIFEST.json").is_file())
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_prefix("step-")?
                        .parse()
                        .ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[test]
fn a_killed_rank_ends_the_job_and_one_process_resumes_bit_identically() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    run_ok(&mut mpirun(2, &tiny_args(&input, &a, &[STEPS])));

    let mut child = mpirun(2, &tiny_args(&input, &b, &[STEPS]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while newest_checkpoint_step(&b) < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before the kill"
    );
    let victim = rank_pid(child.id(), 1).expect("rank 1 runs under mpirun");
    let survivor = rank_pid(child.id(), 0).expect("rank 0 runs under mpirun");
    let killed = Instant::now();
    let ok = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if killed.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the job still runs 30 s after rank 1 died");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "the job must fail when a rank dies");
    // mpirun returns once it has signalled the other ranks; rank 0 must be gone too (it
    // holds the run lock), not left waiting in a collective.
    let proc0 = Path::new("/proc").join(survivor.to_string());
    while proc0.exists() {
        if killed.elapsed() > Duration::from_secs(30) {
            panic!("rank 0 still runs 30 s after rank 1 died");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let step = newest_checkpoint_step(&b);
    assert!((4..30).contains(&step), "killed at checkpoint step {step}");
    eprintln!(
        "job ended {:.2} s after the kill; resuming from step {step}",
        killed.elapsed().as_secs_f64()
    );
    // A copy to resume with another global batch.
    let cp = Command::new("cp")
        .arg("-r")
        .arg(&b)
        .arg(&c)
        .status()
        .unwrap();
    assert!(cp.success());

    // One process with grad_accum doubled: the same global batch, the same bits.
    let mut args = tiny_args(&input, &b, &[STEPS, "training.grad_accum=2"]);
    args.push("--resume".into());
    run_ok(&mut single(&args));
    same_final_weights(&a, &b, 30);
    let (la, _) = losses(&a);
    let (lb, _) = losses(&b);
    // The resumed run's steps are the uninterrupted run's steps.
    let n = 30 - step as usize;
    assert_eq!(la[la.len() - n..], lb[lb.len() - n..]);
    assert!(
        !lines(&b.join("metrics.ndjson"))
            .iter()
            .any(|e| e["event"] == "warning"
                && e["message"].as_str().unwrap().contains("global batch")),
        "the global batch was kept: no warning"
    );

    // On 4 ranks with the same grad_accum, the global batch doubles: the resume says so.
    let mut args = tiny_args(&input, &c, &[STEPS]);
    args.push("--resume".into());
    run_ok(&mut mpirun(4, &args));
    let warnings: Vec<Value> = lines(&c.join("metrics.ndjson"))
        .into_iter()
        .filter(|e| e["event"] == "warning")
        .collect();
    let want = "global batch (ranks × batch_size × grad_accum) changed from 8 to 16";
    assert!(
        warnings
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains(want)),
        "a changed global batch warns: {warnings:?}"
    );
}

#[test]
fn diverged_parameters_stop_the_run_with_exit_1_naming_the_rank() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let run = dir.path().join("r");
    let mut cmd = mpirun(2, &tiny_args(&input, &run, &["distributed.check_every=2"]));
    // Debug builds only: rank 1 nudges a weight after step 3.
    cmd.env("CODEX_TEST_PERTURB_RANK", "1:3");
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rank(s) [1] differ from rank 0's at step 4"),
        "{stderr}"
    );
    // Rank 0 recorded the failure.
    let end = lines(&run.join("metrics.ndjson"))
        .into_iter()
        .rev()
        .find(|e| e["event"] == "end")
        .unwrap();
    assert_eq!(end["status"], "failed");
}

/// `ip …` as this test needs it; panics with the command's stderr.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two network namespaces joined by a veth pair, removed when dropped.
struct TwoHosts(String);

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for h in ["a", "b"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &format!("{}{h}", self.0)])
                .status();
        }
    }
}

/// Two "hosts" (network namespaces over a veth pair, TCP between them), one rank in each,
/// launched by Open MPI through an `ip netns exec` launch agent: the same bits as one process.
/// Needs root (CAP_NET_ADMIN) and iproute2, so it is not part of the default run:
/// `cargo test --features mpi --test it dist::two_hosts -- --ignored`.
#[test]
#[ignore = "needs root and network namespaces"]
fn two_hosts_over_tcp_equal_one_process() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let tag = format!("cx{}", std::process::id() % 100_000);
    let hosts = TwoHosts(tag.clone());
    let (na, nb) = (format!("{tag}a"), format!("{tag}b"));
    let (va, vb) = (format!("{tag}va"), format!("{tag}vb"));
    ip(&["netns", "add", &na]);
    ip(&["netns", "add", &nb]);
    ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
    ip(&["link", "set", &va, "netns", &na]);
    ip(&["link", "set", &vb, "netns", &nb]);
    for (ns, dev, addr) in [(&na, &va, "10.99.7.1/24"), (&nb, &vb, "10.99.7.2/24")] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    // Open MPI starts its daemon on a "remote" host through this agent instead of ssh.
    let agent = dir.path().join("netns-agent");
    std::fs::write(
        &agent,
        format!(
            "#!/bin/sh\nhost=$1; shift\ncase \"$host\" in 10.99.7.1) ns={na} ;; 10.99.7.2) ns={nb} ;; *) exit 1 ;; esac\nexec ip netns exec \"$ns\" sh -c \"$*\"\n"
        ),
    )
    .unwrap();
    let chmod = Command::new("chmod")
        .arg("+x")
        .arg(&agent)
        .status()
        .unwrap();
    assert!(chmod.success());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_ok(&mut single(&tiny_args(
        &input,
        &a,
        &["training.grad_accum=2"],
    )));
    let mut cmd = Command::new("ip");
    let codex = codex_process();
    for (k, v) in codex.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("RAYON_NUM_THREADS", THREADS)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["netns", "exec", &na, "mpirun", "-np", "2"])
        .args(["--host", "10.99.7.1:1,10.99.7.2:1"])
        .args(["--mca", "plm_rsh_agent"])
        .arg(&agent)
        .args(["--mca", "btl", "tcp,self"])
        .args(["--mca", "btl_tcp_if_include", "10.99.7.0/24"])
        .args(["--mca", "oob_tcp_if_include", "10.99.7.0/24"])
        .args(["-x", "RAYON_NUM_THREADS", "-x", "OMPI_ALLOW_RUN_AS_ROOT"])
        .args(["-x", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"])
        .arg(codex.get_program())
        .args(tiny_args(&input, &b, &[]));
    run_ok(&mut cmd);
    assert_same_run(&a, &b, 12);
    drop(hosts);
}

/// One host, two ranks: one system sampler (the host's first rank, rank 0), every line
/// tagged with the host and both ranks; the other rank writes no metrics file, and
/// `codex status` reads the tagged file like any other.
#[test]
fn one_host_runs_one_sampler_tagged_with_its_ranks() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let run = dir.path().join("r");
    // CPU samples every 200 ms.
    let sampled = |run: &Path, steps: &str| {
        let mut args = tiny_args(&input, run, &[steps]);
        args.extend(
            [
                "--system-metrics",
                "cpu",
                "--system-metrics-interval-ms",
                "200",
            ]
            .map(String::from),
        );
        args
    };
    // Long enough (~1 s) for the sampler's 200 ms readings.
    let args = sampled(&run, "training.steps=60");
    run_ok(&mut mpirun(2, &args));
    let mut files: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("system_metrics"))
        .collect();
    files.sort();
    assert_eq!(files, ["system_metrics.ndjson"], "one sampler on one host");
    let samples = lines(&run.join("system_metrics.ndjson"));
    assert!(!samples.is_empty(), "the sampler wrote nothing");
    let host = samples[0]["host"].as_str().unwrap_or_default().to_string();
    assert!(!host.is_empty(), "{}", samples[0]);
    for s in &samples {
        assert_eq!(s["ranks"], serde_json::json!([0, 1]), "{s}");
        assert_eq!(s["host"], host.as_str(), "{s}");
    }
    // The host is the one MPI names for both ranks in the run record.
    let prov = std::fs::read_to_string(run.join("provenance.json")).unwrap_or_default();
    assert!(prov.contains(&host), "{host} not in provenance.json");
    // `codex status` reads the runs directory (this one holds only `r` so far).
    let out = run_ok(
        codex_process()
            .args(["--json", "status", "--runs"])
            .arg(dir.path())
            .arg(dir.path()),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["runs"].as_array().map(Vec::len), Some(1), "{v}");
    let r = &v["runs"][0];
    assert_eq!(r["malformed_system_lines"], 0, "{r}");
    assert_eq!(
        r["cpu_util_pct"]["samples"].as_u64(),
        Some(samples.len() as u64),
        "every tagged line counted: {r}"
    );
    // A single process stays untagged.
    let solo = dir.path().join("solo");
    let args = sampled(&solo, "training.steps=2");
    run_ok(&mut single(&args));
    for s in lines(&solo.join("system_metrics.ndjson")) {
        assert!(s.get("ranks").is_none() && s.get("host").is_none(), "{s}");
    }
}
