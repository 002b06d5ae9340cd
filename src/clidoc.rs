//! The command tree as users see it: the derive definitions plus the examples of every
//! command's `--help`, and what is generated from that one tree: shell completions, man
//! pages and `docs/cli.md`.

use clap::CommandFactory as _;

/// Two or three examples per command, shown first in its `--help` (`after_help`), as ripgrep
/// and uv do. Keyed by the command path below `codex`.
const EXAMPLES: &[(&str, &str)] = &[
    (
        "tokenizer",
        "codex tokenizer train data/*.txt -o tok --vocab-size 8000\n\
         codex tokenizer encode -t tok/tokenizer.json 'def f(x): return x'\n\
         codex tokenizer validate -t tok/tokenizer.json data/sample.txt",
    ),
    (
        "tokenizer train",
        "codex tokenizer train data/ -o tok\n\
         codex tokenizer train corpus.jsonl --text-field text --model unigram --vocab-size 16000 -o tok",
    ),
    (
        "model",
        "codex model list\n\
         codex model show gpt-tiny --lora-r 8\n\
         codex model lora merge --base runs/base --adapter runs/lora/adapter -o merged",
    ),
    (
        "train",
        "codex train                                   # the embedded default run\n\
         codex train -c my.toml --set training.steps=200 -o runs/my\n\
         codex train --resume -o runs/my               # continue from its newest checkpoint",
    ),
    (
        "sweep",
        "codex sweep -c base.toml --grid optimizer.lr=1e-3,3e-3 --grid training.batch_size=8,16 -o sweeps/lr\n\
         codex sweep -c base.toml --random optimizer.lr=1e-4:1e-2:log --trials 8 --seeds 2 --parallel 2 -o sweeps/rs\n\
         codex sweep sweep.toml --dry-run",
    ),
    (
        "eval",
        "codex eval runs/my\n\
         codex eval runs/my@best --file held_out.txt -o eval/held_out\n\
         codex eval -c my.toml --set model.pretrained=models/base",
    ),
    (
        "generate",
        "codex generate runs/my -p 'def fib(n):' -n 64\n\
         codex generate runs/my@best -p 'import ' -t 0.8 --top-p 0.95 --num-samples 3",
    ),
    (
        "export",
        "codex export runs/my -o hf/my\n\
         codex export runs/my --format gguf -o gguf/my",
    ),
    (
        "checkpoint",
        "codex checkpoint list runs/my\n\
         codex checkpoint verify runs/my\n\
         codex checkpoint prune runs/my",
    ),
    (
        "metrics",
        "codex metrics sample\n\
         codex metrics sample --mode gpu --json\n\
         codex metrics watch --interval-ms 500 --count 60 -o system.ndjson",
    ),
    (
        "repo-map",
        "codex repo-map\n\
         codex repo-map src --max-tokens 2000\n\
         codex repo-map -o map.json --json",
    ),
    (
        "status",
        "codex status\n\
         codex status --runs sweeps/lr --verify\n\
         codex status --json",
    ),
    (
        "config",
        "codex config show\n\
         codex config show -c my.toml --set training.steps=50\n\
         codex config validate -c my.toml",
    ),
    (
        "sync",
        "codex sync runs/a runs/b --to tensorboard\n\
         codex sync runs/my --to csv\n\
         codex sync runs/my --to mlflow --experiment lr-search",
    ),
    (
        "plot",
        "codex plot runs/a runs/b\n\
         codex plot sweeps/lr/* --metrics val_loss --log-y -o val.png",
    ),
    (
        "compare",
        "codex compare runs/a runs/b\n\
         codex compare sweeps/lr/* --plot curves.svg --json",
    ),
    (
        "data",
        "codex data scan data/ --redact -o data-clean/\n\
         codex data prepare -c my.toml\n\
         codex data list runs",
    ),
    (
        "completions",
        "codex completions bash > ~/.local/share/bash-completion/completions/codex\n\
         codex completions zsh > ~/.zfunc/_codex\n\
         codex completions fish > ~/.config/fish/completions/codex.fish",
    ),
    (
        "man",
        "codex man -o target/man\n\
         man target/man/codex-train.1",
    ),
    (
        "tokenizer encode",
        "codex tokenizer encode -t tok/tokenizer.json 'def f(x): return x'\n\
         codex tokenizer encode -t tok/tokenizer.json -f corpus.txt --lines > ids.txt",
    ),
    (
        "tokenizer decode",
        "codex tokenizer decode -t tok/tokenizer.json 318 617 2124\n\
         codex tokenizer decode -t tok/tokenizer.json -f ids.txt --skip-special-tokens",
    ),
    (
        "tokenizer validate",
        "codex tokenizer validate -t tok/tokenizer.json data/sample.txt\n\
         codex tokenizer validate -t tok/tokenizer.json corpus.jsonl --text-field text --max-unk-rate 0.001",
    ),
    (
        "model list",
        "codex model list\n\
         codex --json model list",
    ),
    (
        "model show",
        "codex model show gpt-tiny --lora-r 8\n\
         codex model show runs/my@best\n\
         codex model show ./SmolLM2.gguf --no-hash",
    ),
    (
        "model lora merge",
        "codex model lora merge --base runs/base --adapter runs/lora/adapter -o merged\n\
         codex model lora merge --base ./hf-base --adapter ./lora --dtype bf16 -o merged-bf16",
    ),
    (
        "checkpoint list",
        "codex checkpoint list runs/my\n\
         codex checkpoint list runs/my --verify",
    ),
    (
        "checkpoint verify",
        "codex checkpoint verify runs/my/checkpoints/step-00000200\n\
         codex checkpoint verify runs/my",
    ),
    (
        "checkpoint prune",
        "codex checkpoint prune runs/my --keep-best 3 --keep-last 1 --dry-run\n\
         codex checkpoint prune runs/my --delete-corrupt",
    ),
    (
        "metrics sample",
        "codex metrics sample\n\
         codex --json metrics sample --mode cpu --pid 4242",
    ),
    (
        "metrics watch",
        "codex metrics watch --interval-ms 1000 --count 60 -o sys.ndjson\n\
         codex metrics watch --pid 4242 --mode gpu",
    ),
    (
        "config show",
        "codex config show\n\
         codex config show -c my.toml --set training.steps=50",
    ),
    (
        "config validate",
        "codex config validate -c my.toml\n\
         codex config validate -c my.toml --set optimizer.lr=3e-4",
    ),
    (
        "data scan",
        "codex data scan data/\n\
         codex data scan corpus.jsonl --policy policy.toml --json\n\
         codex data scan data/ --redact -o data-clean/",
    ),
    (
        "data prepare",
        "codex data prepare -c my.toml\n\
         codex data prepare -c my.toml --dedup --near-dup 0.8",
    ),
    (
        "data list",
        "codex data list\n\
         codex data list ~/.cache/codex",
    ),
];

/// The whole command tree, with the examples.
pub fn command() -> clap::Command {
    let mut cmd = crate::Cli::command();
    for (path, examples) in EXAMPLES {
        let names: Vec<&str> = path.split(' ').collect();
        cmd = with_examples(cmd, &names, examples);
    }
    cmd
}

fn with_examples(cmd: clap::Command, path: &[&str], examples: &str) -> clap::Command {
    match path {
        [] => {
            let text = examples
                .lines()
                .map(|l| format!("  {}", l.trim_start()))
                .collect::<Vec<_>>()
                .join("\n");
            let text = match cmd.get_after_help() {
                Some(rest) => format!("Examples:\n{text}\n\n{rest}"),
                None => format!("Examples:\n{text}"),
            };
            cmd.after_help(text)
        }
        [first, rest @ ..] => cmd.mut_subcommand(*first, |sub| with_examples(sub, rest, examples)),
    }
}

#[cfg(test)]
/// Every command of the tree, depth first, each with its full name (`codex model lora merge`),
/// built so that usage lines carry that name. `help` subcommands are left out.
pub fn all_commands() -> Vec<(String, clap::Command)> {
    let mut root = command().term_width(100);
    root.build();
    let mut out = Vec::new();
    walk(&root, "codex".to_string(), &mut out);
    out
}

#[cfg(test)]
fn walk(cmd: &clap::Command, name: String, out: &mut Vec<(String, clap::Command)>) {
    out.push((name.clone(), cmd.clone()));
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" || sub.is_hide_set() {
            continue;
        }
        walk(sub, format!("{name} {}", sub.get_name()), out);
    }
}

#[cfg(test)]
/// What `codex CMD --help` prints, for each command.
pub fn help_of(cmd: &clap::Command) -> String {
    let mut cmd = cmd.clone();
    cmd.render_long_help().to_string()
}

#[cfg(test)]
/// `docs/cli.md`: every command's `--help`, generated from the definitions.
pub fn cli_markdown() -> String {
    let mut md = String::from(
        "# Command-line reference\n\n\
         Generated from the command definitions (`src/clidoc.rs`); do not edit by hand. \
         `CODEX_UPDATE_DOCS=1 cargo test --bin codex docs_` rewrites it.\n",
    );
    let all = all_commands();
    md.push_str("\n## Commands\n\n");
    for (name, _) in &all {
        let depth = name.matches(' ').count();
        let anchor = name.replace(' ', "-");
        md.push_str(&format!(
            "{}- [`{name}`](#{anchor})\n",
            "  ".repeat(depth.saturating_sub(1))
        ));
    }
    for (name, cmd) in &all {
        md.push_str(&format!(
            "\n<a id=\"{}\"></a>\n## `{name}`\n\n```text\n{}\n```\n",
            name.replace(' ', "-"),
            help_of(cmd).trim_end()
        ));
    }
    md
}

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `codex completions SHELL`: the completion script on stdout.
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<u8> {
    let mut cmd = command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "codex", &mut out);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &out)?;
    Ok(codex_core::exit::OK)
}

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Directory for the pages (codex.1, codex-train.1, …); created if missing.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: std::path::PathBuf,
}

/// `codex man -o DIR`: one man page per command.
pub fn man(ctx: &crate::ctx::Ctx, args: &ManArgs) -> anyhow::Result<u8> {
    use anyhow::Context as _;
    codex_core::fsutil::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    clap_mangen::generate_to(command(), &args.output)
        .with_context(|| format!("cannot write man pages into {}", args.output.display()))?;
    ctx.info(format!("man pages written to {}", args.output.display()));
    Ok(codex_core::exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags of commands another module owns that still lack a description; remove an entry
    /// once its flag is documented (the test then holds the line).
    const UNDOCUMENTED: &[&str] = &[];

    #[test]
    fn every_command_has_examples_and_every_flag_a_description() {
        let mut missing = Vec::new();
        for (name, cmd) in all_commands() {
            for arg in cmd.get_arguments() {
                if arg.is_hide_set() || arg.get_help().is_some() || arg.get_long_help().is_some() {
                    continue;
                }
                let id = format!("{name} {}", arg.get_id());
                if !UNDOCUMENTED.contains(&id.as_str()) {
                    missing.push(id);
                }
            }
        }
        // Every top-level command and every leaf command has examples.
        for sub in command().get_subcommands() {
            if sub.get_name() != "help" && !EXAMPLES.iter().any(|(p, _)| *p == sub.get_name()) {
                missing.push(format!("codex {}: no examples", sub.get_name()));
            }
        }
        for (name, cmd) in all_commands() {
            let leaf = cmd.get_subcommands().all(|c| c.get_name() == "help");
            let has = cmd
                .get_after_help()
                .is_some_and(|h| h.to_string().starts_with("Examples:"));
            if leaf && name != "codex" && !has {
                missing.push(format!("{name}: no examples"));
            }
        }
        assert!(missing.is_empty(), "undocumented:\n{}", missing.join("\n"));
    }

    #[test]
    fn global_options_have_their_own_section() {
        for (name, cmd) in all_commands() {
            let help = help_of(&cmd);
            let at = help
                .find("Global options:")
                .unwrap_or_else(|| panic!("{name}: no global section:\n{help}"));
            assert!(help[at..].contains("--quiet"), "{name}");
            let before = &help[..at];
            assert!(
                !before.contains("--no-progress"),
                "{name}: a global option among the command's"
            );
        }
    }

    #[test]
    fn help_snapshots() {
        for (name, cmd) in all_commands() {
            insta::assert_snapshot!(name.replace(' ', "-"), help_of(&cmd));
        }
    }

    #[test]
    fn docs_cli_md_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md");
        let now = cli_markdown();
        if std::env::var_os("CODEX_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &now).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == now,
            "docs/cli.md is stale; regenerate it with `CODEX_UPDATE_DOCS=1 cargo test --bin codex docs_`"
        );
    }
}
