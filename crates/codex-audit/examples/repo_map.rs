//! `cargo run --release -p codex-audit --example repo_map -- PATH`: the repo-map JSON on
//! stdout, without building the whole `codex` binary (used by benches/tokei_compare.sh).

fn main() -> std::process::ExitCode {
    let root = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    match codex_audit::repomap::build(std::path::Path::new(&root), &Default::default()) {
        Ok(map) => match serde_json::to_string(&map) {
            Ok(s) => {
                println!("{s}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::from(2)
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
