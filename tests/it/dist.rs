//! Data-parallel training: what every build does (the `[distributed]` config, the refusals of
//! a build without MPI), and under `mpirun` with `--features mpi` the `mpirun` module.

use crate::support::{codex, corpus, expect_exit, tempdir, tiny_args};

#[cfg(feature = "mpi")]
mod mpirun;

/// Under a launcher, a build without the `mpi` feature refuses instead of training N
/// independent copies that overwrite each other.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_be_a_rank_or_to_start_ranks() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let run = dir.path().join("r");
    let p = expect_exit(
        codex()
            .env("OMPI_COMM_WORLD_SIZE", "2")
            .args(tiny_args(&input, &run, &[])),
        2,
    );
    assert!(
        p.stderr.contains("built without data-parallel support")
            && p.stderr.contains("--features mpi"),
        "{}",
        p.stderr
    );
    assert!(!run.exists(), "nothing written");
    let mut args = tiny_args(&input, &run, &[]);
    args.extend(["--nproc".into(), "2".into()]);
    let p = expect_exit(codex().args(args), 2);
    assert!(p.stderr.contains("--features mpi"), "{}", p.stderr);
    assert!(!run.exists(), "nothing written");
}

#[test]
fn the_distributed_section_is_validated_and_stays_out_of_single_process_configs() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let run = dir.path().join("r");
    let p = expect_exit(
        codex().args(tiny_args(
            &input,
            &run,
            &["distributed.bucket_mb=0", "distributed.reduce=\"sideways\""],
        )),
        1,
    );
    assert!(
        p.stderr.contains("distributed.bucket_mb") && p.stderr.contains("distributed.reduce"),
        "{}",
        p.stderr
    );
    // NCCL in a build without it (or, with it, on the CPU): refused, not silently MPI.
    let p = expect_exit(
        codex().args(tiny_args(&input, &run, &["distributed.backend=\"nccl\""])),
        1,
    );
    assert!(p.stderr.contains("nccl"), "{}", p.stderr);
    if cfg!(not(feature = "nccl")) {
        assert!(p.stderr.contains("--features nccl"), "{}", p.stderr);
    }
    assert!(!run.exists(), "nothing written");
    // One process with the defaults: no [distributed] table, so the config hash of
    // existing runs is unchanged; a non-default value is recorded.
    codex()
        .args(tiny_args(&input, &run, &["training.steps=1"]))
        .assert()
        .success();
    let text = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(!text.contains("[distributed]"), "{text}");
    let run2 = dir.path().join("r2");
    codex()
        .args(tiny_args(
            &input,
            &run2,
            &["training.steps=1", "distributed.reduce=\"native\""],
        ))
        .assert()
        .success();
    let text = std::fs::read_to_string(run2.join("config.toml")).unwrap();
    assert!(
        text.contains("[distributed]") && text.contains("reduce = \"native\""),
        "{text}"
    );
}
